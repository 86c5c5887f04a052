"""Models: loading (:mod:`.loading`), chat formatting (:mod:`.chat`), generation
(:mod:`.generation`) and the model organism (:mod:`.organism`).

The names of :mod:`.loading` are re-exported here:
``from safealign_lib import models; models.load_model``.
"""

from safealign_lib.models.loading import (
    DTYPES,
    decoder_layers,
    fingerprint,
    is_local,
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_dtype,
)

__all__ = [
    "DTYPES",
    "resolve_dtype",
    "is_local",
    "load_tokenizer",
    "load_model",
    "load_model_and_tokenizer",
    "decoder_layers",
    "fingerprint",
]
