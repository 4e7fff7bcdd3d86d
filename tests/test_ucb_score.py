"""The fused neural-UCB kernel and its PyTorch reference against the float64 oracle, and the input checks."""

import math

import pytest
import torch
from _oracle_tol import ucb_error_bound

from rollout_bandits.kernels.naive import ucb_score_naive
from rollout_bandits.kernels.ucb_score import (
    ScorerWeights,
    ucb_score,
    ucb_score_reference,
    ucb_score_triton,
)

D = 15

# (N, H, diagonal, activation, block_n): sizes that are not multiples of the blocks, H not a power
# of two, H above the 64-wide chunk (several chunks), one row, one partial tile.
CASES = [
    (1, 16, False, "relu", None),
    (37, 7, False, "relu", 16),
    (129, 48, True, "gelu", None),
    (200, 100, False, "gelu", 64),
    (75, 130, True, "relu", 32),
    (300, 256, False, "gelu", None),
]


def _id(c):
    n, h, diag, act, bn = c
    return f"N{n}-H{h}-{'diag' if diag else 'full'}-{act}" + (f"-bn{bn}" if bn else "")


def _fresh(n, h, diag, act, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g) * torch.rand(D, generator=g) * 3
    w = ScorerWeights.random(D, h, diagonal=diag, activation=act, gamma=0.7, seed=seed)
    return x.to(device), w.to(device)


def _close(a, b, atol=1e-5, rtol=1e-5):
    assert not torch.isnan(a).any(), "kernel left an output untouched (NaN poison)"
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def _assert_matches_oracle(got, x, w, label):
    """(score, mean, bonus) within the forward error bound of float32 arithmetic (tests/_oracle_tol.py)."""
    want = ucb_score_naive(x, w)
    for name, a, b, tol in zip(("score", "mean", "bonus"), got, want, ucb_error_bound(x, w), strict=True):
        assert a.shape == b.shape and a.dtype == torch.float32, (label, name)
        assert not torch.isnan(a).any(), f"{label}: {name} left untouched (NaN poison)"
        err = (a.double().cpu() - b).abs()
        worst = int((err - tol).argmax())
        assert bool((err <= tol).all()), (f"{label}: {name}[{worst}] = {float(a[worst])!r}, oracle "
                                          f"{float(b[worst])!r}, error {float(err[worst]):.3g} > bound "
                                          f"{float(tol[worst]):.3g}")


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_kernel_and_reference_match_oracle(case):
    n, h, diag, act, bn = case
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    x, w = _fresh(n, h, diag, act, seed)
    got = ucb_score_triton(x, w, block_n=bn)
    ref = ucb_score_reference(x, w)
    _assert_matches_oracle(got, x, w, f"triton seed={seed}")
    _assert_matches_oracle(ref, x, w, f"reference seed={seed}")
    # The worst-case bound is loose at large H; the two float32 implementations (IEEE fp32 dots in
    # both) also agree far more closely, which a TF32 or bf16 dot in the kernel would not.
    for a, b in zip(got, ref, strict=True):
        _close(a, b)
    score, mean, bonus = got
    assert bool((bonus >= 0).all())
    _close(score, mean + bonus)


def test_diagonal_variant_is_the_full_one_with_a_diagonal_zinv():
    x, w = _fresh(9, 12, False, "gelu", 0)
    wd = ScorerWeights(w.w1, w.b1, w.w2, w.b2, w.w3, w.b3, zinv_diag=torch.diagonal(w.zinv).clone(),
                       gamma=w.gamma, activation="gelu")
    wf = ScorerWeights(w.w1, w.b1, w.w2, w.b2, w.w3, w.b3, zinv=torch.diag(torch.diagonal(w.zinv)),
                       gamma=w.gamma, activation="gelu")
    for a, b in zip(ucb_score_naive(x, wd), ucb_score_naive(x, wf), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
    _assert_matches_oracle(ucb_score_triton(x, wd), x, wf, "triton diagonal")


def test_identical_rows_tie_exactly():
    # Identical tiles in two programs: the kernel itself is deterministic. (Under the interpreter
    # tl.dot is numpy's BLAS, whose last bit can depend on a row's position inside a tile, so the
    # duplicates sit at the same positions.)
    x, w = _fresh(48, 24, False, "relu", 1)
    x[16:32] = x[:16]
    x[32:48] = x[:16]
    score, _, _ = ucb_score_triton(x, w, block_n=16)
    assert torch.equal(score[16:32], score[:16])
    assert torch.equal(score[32:48], score[:16])


def test_dispatcher_cpu_uses_reference():
    x, w = _fresh(10, 16, True, "relu", 2)
    for backend in ("auto", "cpu", "reference"):
        for a, b in zip(ucb_score(x, w, backend=backend), ucb_score_reference(x, w), strict=True):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"ucb_score\.backend: found 'cuda', expected auto \| triton"):
        ucb_score(x, w, backend="cuda")


def _bad(field):
    x, w = _fresh(5, 8, False, "relu", 3)
    if field == "w2":
        w.w2 = torch.randn(8, 9)
    elif field == "b1":
        w.b1 = torch.randn(7)
    elif field == "w1":
        w.w1 = torch.randn(D + 1, 8)
    elif field == "b3":
        w.b3 = torch.randn(1)
    elif field == "zinv_square":
        w.zinv = torch.randn(8, 7)
    elif field == "zinv_h":
        w.zinv = torch.eye(9)
    elif field == "zinv_both":
        w.zinv_diag = torch.ones(8)
    elif field == "zinv_none":
        w.zinv = None
    elif field == "zinv_diag":
        w.zinv, w.zinv_diag = None, torch.ones(5)
    elif field == "gamma":
        w.gamma = -1.0
    elif field == "activation":
        w.activation = "tanh"
    elif field == "empty":
        x = x[:0]
    elif field == "x_dim":
        x = x[0]
    return x, w


BAD = {
    "w2": "w2", "b1": "b1", "w1": "w1", "b3": "b3", "zinv_square": "zinv", "zinv_h": "zinv",
    "zinv_both": "zinv", "zinv_none": "zinv", "zinv_diag": "zinv_diag", "gamma": "gamma",
    "activation": "activation", "empty": "0 rows", "x_dim": "2-D",
}


@pytest.mark.parametrize("field", list(BAD), ids=list(BAD))
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_bad_input(field, backend):
    x, w = _bad(field)
    with pytest.raises(ValueError, match=BAD[field]):
        ucb_score(x, w, backend=backend)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_parity_cuda(case):
    n, h, diag, act, bn = case
    n = n * 37 + 11  # many tiles on a GPU, still not a multiple of the block
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    x, w = _fresh(n, h, diag, act, seed, device="cuda")
    got = ucb_score(x, w)
    assert all(a.is_cuda for a in got)
    _assert_matches_oracle([a.cpu() for a in got], x.cpu(), w.to("cpu"), f"cuda seed={seed}")
    assert math.isfinite(float(got[0].sum()))
