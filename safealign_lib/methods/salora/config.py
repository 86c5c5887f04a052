"""SaLoRA's settings: where features are kept, the initialisations and projector signs an
ablation may choose, and the randomized SVD's subspace iterations."""

from __future__ import annotations

STORES = ("features", "gram")
INITS = ("task", "standard")
SIGNS = ("correct", "wrong")
NITER = 30  # subspace iterations of the randomized SVD, as in the SaLoRA code
