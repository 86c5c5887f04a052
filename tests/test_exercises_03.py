"""Notebook 03's exercise check passes on the reference and fails on wrong answers."""

from __future__ import annotations

import torch

from safealign_lib.course.exercises import _safety_module_cases, check_safety_module
from safealign_lib.methods.salora import LayerFeatures, layer_output_subspace


def library(W, X, r_s):
    feats = LayerFeatures("layer", X.shape[0], W.shape[1], W.shape[0], x=X.float())
    U, _ = layer_output_subspace(W.float(), feats, r_s)
    return torch.eye(W.shape[0]) - U @ U.T


def plain(W, X, r_s):
    U = torch.linalg.svd(W @ X.T, full_matrices=False).U[:, :r_s]
    return torch.eye(W.shape[0]) - U @ U.T


def top(M, r):
    return torch.linalg.svd(M, full_matrices=False).U[:, :r]


def test_cases_have_a_spectral_gap():
    for W, X, r_s in _safety_module_cases():
        S = torch.linalg.svdvals(W @ X.T)
        assert S[r_s - 1] > 1.5 * S[r_s]  # a clear gap: the top-r_s subspace is well defined


def test_passes_on_the_library_and_a_plain_torch_answer(capsys):
    assert check_safety_module(library)
    assert check_safety_module(plain)
    assert check_safety_module(lambda W, X, r: plain(W, X, r).numpy())  # numpy output is fine
    assert capsys.readouterr().out.startswith("PASS")


def test_fails_on_wrong_answers_with_a_hint(capsys):
    eye = torch.eye
    wrong = {
        "wrong sign": lambda W, X, r: top(W @ X.T, r) @ top(W @ X.T, r).T,
        "do not centre": lambda W, X, r: (
            eye(W.shape[0]) - (lambda U: U @ U.T)(top(W @ (X - X.mean(0)).T, r))
        ),
        "top subspace of W alone": lambda W, X, r: eye(W.shape[0]) - (lambda U: U @ U.T)(top(W, r)),
        "d_out x d_out": lambda W, X, r: eye(W.shape[1]) - (lambda U: U @ U.T)(top(X.T, r)),
        "not a projector": lambda W, X, r: eye(W.shape[0]) - (lambda M: M @ M.T)((W @ X.T)[:, :r]),
        "trace": lambda W, X, r: eye(W.shape[0]) - (lambda U: U @ U.T)(top(W @ X.T, r + 1)),
        "not symmetric": lambda W, X, r: (
            eye(W.shape[0]) - top(W @ X.T, r) @ torch.randn(r, W.shape[0])
        ),
        "raised": lambda W, X, r: X.nope,
    }
    for hint, fn in wrong.items():
        assert not check_safety_module(fn)
        out = capsys.readouterr().out
        assert out.startswith("FAIL") and hint in out, (hint, out)
    # the smallest singular vectors instead of the largest: fails without a named pattern
    bottom = (  # noqa: E731
        lambda W, X, r: (
            eye(W.shape[0])
            - (lambda U: U @ U.T)(torch.linalg.svd(W @ X.T, full_matrices=False).U[:, -r:])
        )
    )
    assert not check_safety_module(bottom)
    out = capsys.readouterr().out
    assert out.startswith("FAIL") and "max |C·U_C|" in out
