"""The segmented top-k / global top-m kernels and their references against the plain oracles
(kernels/naive.py): selections are exact, so they must be equal."""

import pytest
import torch

from rollout_bandits.kernels.group_topk import (
    _global_topm_launch,
    _group_k,
    _group_topk_launch,
    _prepare,
    global_topm,
    global_topm_reference,
    global_topm_triton,
    group_topk,
    group_topk_reference,
    group_topk_triton,
)
from rollout_bandits.kernels.naive import global_topm_naive, group_topk_naive


def oracle(scores, offsets, k, ratio, rewards, contrast):
    return group_topk_naive(scores, offsets, k=k, ratio=ratio, rewards=rewards, keep_contrast=contrast)


# (name, group sizes (lo, hi), num groups, score kind, reward kind, k, ratio)
CASES = [
    ("singletons", (1, 1), 23, "normal", "binary", 1, None),
    ("ragged-k2-ties", (1, 9), 17, "ties", "binary", 2, None),
    ("ragged-k1-contrast", (2, 6), 11, "normal", "binary", 1, None),
    ("k-above-size-clipped", (1, 5), 9, "normal", "binary", 8, None),
    ("all-same-reward", (3, 12), 10, "ties", "same", 3, None),
    ("graded-rewards-ratio", (1, 20), 12, "normal", "graded", None, 0.25),
    ("ratio-third", (3, 10), 14, "ties", "binary", None, 1 / 3),
    ("big-groups-chunked", (60, 150), 3, "ties", "binary", 5, None),
    ("ratio-one", (1, 7), 8, "normal", "binary", None, 1.0),
    ("signed-zeros-inf", (2, 9), 9, "zeros", "binary", 2, None),
]


def _fresh(case, seed, device="cpu"):
    _, (lo, hi), ng, skind, rkind, _, _ = case
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(lo, hi + 1, (ng,), generator=g)
    off = torch.zeros(ng + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(sizes, 0)
    n = int(off[-1])
    if skind == "normal":
        s = torch.randn(n, generator=g)
    elif skind == "ties":
        s = torch.randint(0, 4, (n,), generator=g).float() * 0.5
    else:
        s = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1.0])[torch.randint(0, 5, (n,), generator=g)]
    if rkind == "binary":
        r = (torch.rand(n, generator=g) < 0.3).float()
    elif rkind == "same":
        r = torch.ones(n)
    else:
        r = torch.randint(-2, 3, (n,), generator=g).float() * 0.5
    return s.to(device), off.to(device), r.to(device)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("contrast", [True, False], ids=["contrast", "plain"])
def test_group_topk_parity(case, contrast):
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    s, off, r = _fresh(case, seed)
    k, ratio = case[5], case[6]
    want = oracle(s, off, k, ratio, r, contrast)
    k_, ratio_, c = _prepare(s, off, k, ratio, r, contrast, True)
    raw = _group_topk_launch(s, off, k_, ratio_, r, c, block_n=32)
    assert set(raw.unique().tolist()) <= {0, 1}, "kernel left a mask entry untouched"
    assert torch.equal(raw == 1, want)
    for fn in (group_topk_triton, group_topk_reference):
        idx, mask = fn(s, off, k=k, ratio=ratio, rewards=r, keep_contrast=contrast)
        assert mask.dtype == torch.bool and idx.dtype == torch.int64
        assert torch.equal(mask, want), fn.__name__
        assert torch.equal(idx, torch.nonzero(want).flatten())


def test_contrast_invariants():
    s, off, r = _fresh(CASES[2], 5)
    _, mask = group_topk(s, off, k=1, rewards=r)
    for g in range(off.numel() - 1):
        a, b = int(off[g]), int(off[g + 1])
        rg, mg = r[a:b], mask[a:b]
        if rg.max() > rg.min():
            assert bool((rg[mg] > rg.min()).any()) and bool((rg[mg] == rg.min()).any())
            assert int(mg.sum()) == 2
        else:
            assert int(mg.sum()) == 1


def test_rewards_none_is_plain_topk():
    s, off, r = _fresh(CASES[1], 7)
    a = group_topk(s, off, k=2, rewards=None)
    b = group_topk(s, off, k=2, rewards=r, keep_contrast=False)
    assert torch.equal(a[1], b[1])


def test_ratio_rounding():
    sizes = torch.tensor([10, 8, 3, 1, 7])
    assert _group_k(sizes, None, 0.3).tolist() == [3, 3, 1, 1, 3]
    assert _group_k(sizes, None, 0.5).tolist() == [5, 4, 2, 1, 4]
    assert _group_k(sizes, 4, None).tolist() == [4, 4, 3, 1, 4]


@pytest.mark.parametrize("n,m", [(1, 1), (7, 3), (50, 50), (50, 80), (1500, 1), (2500, 777), (3000, 2999)],
                         ids=lambda v: str(v))
def test_global_topm_parity(n, m):
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    s = torch.randint(-3, 4, (n,), generator=g).float() * 0.25
    s[torch.rand(n, generator=g) < 0.1] = -0.0
    s[torch.rand(n, generator=g) < 0.02] = float("inf")
    want = global_topm_naive(s, m)
    raw = _global_topm_launch(s, m, block=256)
    assert set(raw.unique().tolist()) <= {0, 1}
    assert torch.equal(raw == 1, want)
    for fn in (global_topm_triton, global_topm_reference):
        idx, mask = fn(s, m)
        assert torch.equal(mask, want)
        assert torch.equal(idx, torch.nonzero(want).flatten())
        assert int(mask.sum()) == min(m, n)


BAD = [
    ("k0", dict(k=0), r"group_topk\.k: found 0, expected an int >= 1"),
    ("k-negative", dict(k=-2), "k: found -2"),
    ("k-float", dict(k=2.0), "k: found 2.0"),
    ("both", dict(k=2, ratio=0.5), "exactly one"),
    ("neither", dict(), "exactly one"),
    ("ratio0", dict(ratio=0.0), "ratio"),
    ("ratio-above-1", dict(ratio=1.5), "ratio"),
    ("rewards-shape", dict(k=1, rewards=torch.ones(3)), "rewards"),
    ("offsets-short", dict(k=1, group_offsets=torch.tensor([0, 5])), "group_offsets"),
    ("offsets-empty-group", dict(k=1, group_offsets=torch.tensor([0, 4, 4, 10])), "group 1"),
    ("offsets-float", dict(k=1, group_offsets=torch.tensor([0.0, 10.0])), "dtype"),
    ("nan-score", dict(k=1, scores="nan"), "NaN"),
    ("empty", dict(k=1, scores="empty"), "empty"),
    ("scores-2d", dict(k=1, scores="2d"), "1-D"),
]


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("name,kw,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input(name, kw, match, backend):
    s = torch.randn(10)
    off = torch.tensor([0, 4, 10])
    kw = dict(kw)
    off = kw.pop("group_offsets", off)
    sk = kw.pop("scores", None)
    if sk == "nan":
        s[3] = float("nan")
    elif sk == "empty":
        s, off = s[:0], torch.tensor([0])
    elif sk == "2d":
        s = s[:, None]
    with pytest.raises(ValueError, match=match):
        group_topk(s, off, backend=backend, **kw)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_global_topm_bad_input(backend):
    with pytest.raises(ValueError, match=r"global_topm\.m: found 0, expected an int >= 1"):
        global_topm(torch.randn(4), 0, backend=backend)
    with pytest.raises(ValueError, match="NaN"):
        global_topm(torch.tensor([1.0, float("nan")]), 1, backend=backend)
    with pytest.raises(ValueError, match="empty"):
        global_topm(torch.zeros(0), 1, backend=backend)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_group_topk_cuda(case):
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    s, off, r = _fresh(case, seed)
    k, ratio = case[5], case[6]
    want = oracle(s, off, k, ratio, r, True)
    idx, mask = group_topk(s.cuda(), off.cuda(), k=k, ratio=ratio, rewards=r.cuda())
    assert mask.is_cuda and torch.equal(mask.cpu(), want)


@pytest.mark.gpu
def test_global_topm_cuda():
    s = torch.randint(-50, 50, (100_003,)).float()
    for m in (1, 999, 100_003):
        assert torch.equal(global_topm(s.cuda(), m)[1].cpu(), global_topm_naive(s, m))
