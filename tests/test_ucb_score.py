"""Parity of the fused neural-UCB kernel with its PyTorch reference, and its input checks."""

import math

import pytest
import torch

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


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_parity_interpreter(case):
    n, h, diag, act, bn = case
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    x, w = _fresh(n, h, diag, act, seed)
    got = ucb_score_triton(x, w, block_n=bn)
    ref = ucb_score_reference(x, w)
    for a, b in zip(got, ref, strict=False):
        assert a.shape == (n,) and a.dtype == torch.float32
        _close(a, b)
    score, mean, bonus = got
    assert bool((bonus >= 0).all())
    _close(score, mean + bonus)


def test_reference_matches_formula():
    x, w = _fresh(9, 12, False, "gelu", 0)
    h1 = torch.nn.functional.gelu(x @ w.w1 + w.b1)
    phi = torch.nn.functional.gelu(h1 @ w.w2 + w.b2)
    mean = phi @ w.w3 + w.b3
    bonus = w.gamma * torch.sqrt(torch.einsum("nh,hk,nk->n", phi, w.zinv, phi))
    score, m, b = ucb_score_reference(x, w)
    _close(m, mean)
    _close(b, bonus)
    # Diagonal variant = full variant with a diagonal Zinv.
    wd = ScorerWeights(w.w1, w.b1, w.w2, w.b2, w.w3, w.b3, zinv_diag=torch.diagonal(w.zinv).clone(),
                       gamma=w.gamma, activation="gelu")
    wf = ScorerWeights(w.w1, w.b1, w.w2, w.b2, w.w3, w.b3, zinv=torch.diag(torch.diagonal(w.zinv)),
                       gamma=w.gamma, activation="gelu")
    for a, b in zip(ucb_score_triton(x, wd), ucb_score_reference(x, wf), strict=False):
        _close(a, b)


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
    for a, b in zip(ucb_score(x, w), ucb_score_reference(x, w), strict=False):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="backend"):
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
    ref = ucb_score_reference(x.cpu(), w.to("cpu"))
    for a, b in zip(got, ref, strict=False):
        assert a.is_cuda
        _close(a.cpu(), b, atol=1e-4, rtol=1e-4)
    assert math.isfinite(float(got[0].sum()))
