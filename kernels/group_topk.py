"""group_topk: segmented top-k per prompt group with the keep-contrast rule, and a global top-m.

Layout as in kernels/rollout_features.py: `@triton.jit` kernels, launchers,
vectorized PyTorch references, dispatchers; the plain one-group-at-a-time
oracles that the tests hold both to are `group_topk_naive` / `global_topm_naive`
in kernels/naive.py.

Selection rules (the same in kernel and reference, and documented here once):
- Order: higher score first; equal scores are broken by the lower index first.
  Scores are compared as float32 (-0.0 == 0.0). NaN scores are a ValueError.
- Per group g of size n_g: k_g = min(k, n_g) for a fixed `k` (a k larger than a
  group is CLIPPED: the whole group is kept), or k_g = ceil(ratio * n_g) for a
  `ratio` in (0, 1] (computed in float64 with a 1e-9 slack, so ratio = 0.3 of
  10 gives 3, then clipped to [1, n_g]). k < 1 and ratio outside (0, 1] are
  ValueErrors.
- Keep-contrast (`keep_contrast=True` and `rewards` given; with `rewards=None`
  there is nothing to contrast and plain top-k_g is kept): a rollout is
  *rewarded* when its reward is above its group's minimum reward, so a group
  is *mixed* when its rewards are not all equal (for 0/1 rewards: it has both
  correct and incorrect answers). A mixed group keeps at least one rewarded
  and one unrewarded rollout: it keeps k'_g = max(k_g, 2) rollouts (a mixed
  group has >= 2), namely its top k'_g if they hold both kinds, else its top
  k'_g - 1 plus the best-scored rollout of the missing kind. Groups whose
  rewards are all equal keep their plain top k_g.
- `global_topm`: the m best of a flat score vector with the same order
  (m larger than N keeps everything; m < 1 is a ValueError).
Outputs: the selected indices (int64, ascending) and a bool mask [N].

Kernels: `group_topk` tiles BLOCK_N rollouts per program; each rollout counts
the members of its own group that beat it (its rank), reading its group in
BLOCK_S chunks, so ragged groups of any size work in one launch. `global_topm`
is one program: an exact bisection over order-preserving int32 keys (32 passes
over the scores, which the buffer keeps small) followed by one writing pass
that takes the ties at the threshold lowest index first.
"""

from __future__ import annotations

import torch

from rollout_bandits.kernels._triton import tl, triton
from rollout_bandits.validation import check_float, check_int, check_tensor, fail, shape_str, use_triton


# --------------------------------------------------------------------- kernels
@triton.jit
def _beats(s_j, j, s_i, i):
    # j is ordered before i: higher score, ties by lower index.
    return (s_j > s_i) | ((s_j == s_i) & (j < i))


@triton.jit
def _group_topk_kernel(
    p_s, p_r, p_gidx, p_goff, p_k, p_out,
    N, MAX_SIZE,
    CONTRAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
):
    i_n = tl.program_id(0)
    o_n = i_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    o_s = tl.arange(0, BLOCK_S)
    # [BLOCK_N]
    b_s = tl.load(p_s + o_n, mask=m_n, other=0.0)
    b_g = tl.load(p_gidx + o_n, mask=m_n, other=0)
    b_gs = tl.load(p_goff + b_g, mask=m_n, other=0).to(tl.int64)
    b_ge = tl.load(p_goff + b_g + 1, mask=m_n, other=0).to(tl.int64)
    b_k = tl.load(p_k + b_g, mask=m_n, other=1)

    if CONTRAST:
        # Pass 1: the group's reward range.
        b_rmin = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
        b_rmax = tl.full([BLOCK_N], -float("inf"), dtype=tl.float32)
        for j0 in range(0, MAX_SIZE, BLOCK_S):
            o_j = b_gs[:, None] + j0 + o_s[None, :]
            m_j = m_n[:, None] & (o_j < b_ge[:, None])
            # [BLOCK_N, BLOCK_S]
            b_rj = tl.load(p_r + o_j, mask=m_j, other=0.0)
            b_rmin = tl.minimum(b_rmin, tl.min(tl.where(m_j, b_rj, float("inf")), axis=1))
            b_rmax = tl.maximum(b_rmax, tl.max(tl.where(m_j, b_rj, -float("inf")), axis=1))
        # Pass 2: the best rollout of each kind (score, then lowest index).
        b_ps = tl.full([BLOCK_N], -float("inf"), dtype=tl.float32)
        b_pi = tl.zeros([BLOCK_N], dtype=tl.int64) + N
        b_ns = tl.full([BLOCK_N], -float("inf"), dtype=tl.float32)
        b_ni = tl.zeros([BLOCK_N], dtype=tl.int64) + N
        for j0 in range(0, MAX_SIZE, BLOCK_S):
            o_j = b_gs[:, None] + j0 + o_s[None, :]
            m_j = m_n[:, None] & (o_j < b_ge[:, None])
            # [BLOCK_N, BLOCK_S]
            b_sj = tl.load(p_s + o_j, mask=m_j, other=0.0)
            b_rj = tl.load(p_r + o_j, mask=m_j, other=0.0)
            m_pos = m_j & (b_rj > b_rmin[:, None])
            m_neg = m_j & (b_rj <= b_rmin[:, None])
            c_ps = tl.max(tl.where(m_pos, b_sj, -float("inf")), axis=1)
            c_pi = tl.min(tl.where(m_pos & (b_sj == c_ps[:, None]), o_j, N), axis=1)
            c_ns = tl.max(tl.where(m_neg, b_sj, -float("inf")), axis=1)
            c_ni = tl.min(tl.where(m_neg & (b_sj == c_ns[:, None]), o_j, N), axis=1)
            b_pi = tl.where(c_ps > b_ps, c_pi, tl.where(c_ps == b_ps, tl.minimum(b_pi, c_pi), b_pi))
            b_ps = tl.maximum(b_ps, c_ps)
            b_ni = tl.where(c_ns > b_ns, c_ni, tl.where(c_ns == b_ns, tl.minimum(b_ni, c_ni), b_ni))
            b_ns = tl.maximum(b_ns, c_ns)

    # Pass 3: ranks (members ordered before) of each rollout and of the two best-of-kind.
    b_rank = tl.zeros([BLOCK_N], dtype=tl.int32)
    b_prank = tl.zeros([BLOCK_N], dtype=tl.int32)
    b_nrank = tl.zeros([BLOCK_N], dtype=tl.int32)
    for j0 in range(0, MAX_SIZE, BLOCK_S):
        o_j = b_gs[:, None] + j0 + o_s[None, :]
        m_j = m_n[:, None] & (o_j < b_ge[:, None])
        # [BLOCK_N, BLOCK_S]
        b_sj = tl.load(p_s + o_j, mask=m_j, other=0.0)
        b_rank += tl.sum((m_j & _beats(b_sj, o_j, b_s[:, None], o_n[:, None])).to(tl.int32), axis=1)
        if CONTRAST:
            b_prank += tl.sum((m_j & _beats(b_sj, o_j, b_ps[:, None], b_pi[:, None])).to(tl.int32), axis=1)
            b_nrank += tl.sum((m_j & _beats(b_sj, o_j, b_ns[:, None], b_ni[:, None])).to(tl.int32), axis=1)

    b_keep = b_rank < b_k
    if CONTRAST:
        b_r = tl.load(p_r + o_n, mask=m_n, other=0.0)
        m_mixed = b_rmax > b_rmin
        m_own_pos = b_r > b_rmin
        b_own_rank = tl.where(m_own_pos, b_prank, b_nrank)
        b_oth_rank = tl.where(m_own_pos, b_nrank, b_prank)
        m_is_best = o_n == tl.where(m_own_pos, b_pi, b_ni)
        b_kp = tl.maximum(b_k, 2)
        b_keep_mixed = ((b_rank < b_kp - 1) | ((b_rank == b_kp - 1) & (b_oth_rank < b_kp))
                        | (m_is_best & (b_own_rank >= b_kp)))
        b_keep = tl.where(m_mixed, b_keep_mixed, b_keep)
    tl.store(p_out + o_n, b_keep.to(tl.int8), mask=m_n)


@triton.jit
def _order_key(x):
    # float32 -> int32 whose signed order is the float order; -0.0 and 0.0 share key 0.
    b = x.to(tl.int32, bitcast=True)
    k = b ^ ((b >> 31) & 0x7FFFFFFF)
    return tl.where(x == 0.0, 0, k).to(tl.int64)


@triton.jit
def _global_topm_kernel(p_s, p_out, N, M, BLOCK: tl.constexpr):
    o_b = tl.arange(0, BLOCK)
    # Largest key T with count(key >= T) >= M, by bisection over the int32 range.
    lo = tl.full([], -2147483648, dtype=tl.int64)
    hi = tl.full([], 2147483647, dtype=tl.int64)
    for _ in range(32):
        mid = (lo + hi + 1) >> 1
        n_ge = tl.zeros([], dtype=tl.int64)
        for c in range(0, N, BLOCK):
            o_c = c + o_b
            m_c = o_c < N
            # [BLOCK]
            b_key = _order_key(tl.load(p_s + o_c, mask=m_c, other=0.0))
            n_ge += tl.sum((m_c & (b_key >= mid)).to(tl.int64), axis=0)
        ok = n_ge >= M
        lo = tl.where(ok, mid, lo)
        hi = tl.where(ok, hi, mid - 1)
    n_gt = tl.zeros([], dtype=tl.int64)
    for c in range(0, N, BLOCK):
        o_c = c + o_b
        m_c = o_c < N
        b_key = _order_key(tl.load(p_s + o_c, mask=m_c, other=0.0))
        n_gt += tl.sum((m_c & (b_key > lo)).to(tl.int64), axis=0)
    quota = M - n_gt
    run = tl.zeros([], dtype=tl.int64)
    for c in range(0, N, BLOCK):
        o_c = c + o_b
        m_c = o_c < N
        # [BLOCK]
        b_key = _order_key(tl.load(p_s + o_c, mask=m_c, other=0.0))
        m_eq = m_c & (b_key == lo)
        b_pos = tl.cumsum(m_eq.to(tl.int64), axis=0) + run
        b_keep = (b_key > lo) | (m_eq & (b_pos <= quota))
        tl.store(p_out + o_c, b_keep.to(tl.int8), mask=m_c)
        run += tl.sum(m_eq.to(tl.int64), axis=0)


# ------------------------------------------------------------ input checks
def _check_scores(scores: torch.Tensor, who: str) -> None:
    check_tensor(who, "scores", scores, dim=1, kind="float", expected="a 1-D tensor [N]")
    if scores.numel() == 0:
        fail(who, "scores", "an empty tensor (0 rollouts)", "at least one score")
    if bool(torch.isnan(scores).any()):
        fail(who, "scores", f"NaN at index {int(torch.nonzero(torch.isnan(scores))[0])}", "no NaN")


def _group_k(sizes: torch.Tensor, k: int | None, ratio: float | None) -> torch.Tensor:
    """k_g per group, int32 [G], in [1, n_g] (a k above n_g is clipped to n_g)."""
    if (k is None) == (ratio is None):
        fail("group_topk", "k", f"k={k!r} and ratio={ratio!r}", "exactly one of k and ratio")
    if k is not None:
        kg = sizes.clamp_max(check_int("group_topk", "k", k, lo=1))
    else:
        ratio = check_float("group_topk", "ratio", ratio, 0.0, 1.0, lo_open=True)
        kg = torch.ceil(sizes.to(torch.float64) * ratio - 1e-9).to(torch.int64)
        kg = torch.minimum(kg.clamp_min(1), sizes)
    return kg.to(torch.int32)


def _check_groups(scores: torch.Tensor, group_offsets: torch.Tensor, rewards: torch.Tensor | None,
                  check_values: bool = True) -> torch.Tensor:
    """Validate, return the group sizes (int64 [G])."""
    n = scores.numel()
    go = check_tensor("group_topk", "group_offsets", group_offsets, dim=1, dtypes=(torch.int32, torch.int64),
                      device=scores.device, expected="[G+1] with G >= 1")
    if go.numel() < 2:
        fail("group_topk", "group_offsets", f"shape {shape_str(go)}", "[G+1] with G >= 1")
    sizes = (go[1:] - go[:-1]).to(torch.int64)
    if check_values:
        if int(go[0]) != 0 or int(go[-1]) != n:
            fail("group_topk", "group_offsets", f"first {int(go[0])} and last {int(go[-1])}", f"0 and N={n}")
        if bool((sizes <= 0).any()):
            g = int(torch.nonzero(sizes <= 0)[0])
            fail("group_topk", "group_offsets", f"group {g} with {int(sizes[g])} rollouts",
                 "every group to hold at least one rollout")
    if rewards is not None:
        check_tensor("group_topk", "rewards", rewards, shape=(n,), device=scores.device,
                     expected=f"[{n}] (one per score)")
        if check_values and bool(torch.isnan(rewards.float()).any()):
            fail("group_topk", "rewards", "NaN", "finite rewards")
    return sizes


def _prepare(scores, group_offsets, k, ratio, rewards, keep_contrast, validate):
    if validate:
        _check_scores(scores, "group_topk")
    sizes = _check_groups(scores, group_offsets, rewards, check_values=validate)
    kg = _group_k(sizes, k, ratio)
    contrast = bool(keep_contrast) and rewards is not None
    return sizes, kg, contrast


# ------------------------------------------------------------------ launchers
def _group_topk_launch(scores, group_offsets, sizes, kg, rewards, contrast, block_n=None) -> torch.Tensor:
    """Runs the kernel; the raw int8 mask (poisoned with -1 where the kernel never wrote)."""
    n = scores.numel()
    dev = scores.device
    s = scores.to(torch.float32).contiguous()
    r = rewards.to(torch.float32).contiguous() if contrast else s
    g = sizes.numel()
    gidx = torch.repeat_interleave(torch.arange(g, device=dev, dtype=torch.int32), sizes, output_size=n)
    max_size = int(sizes.max())
    block_s = max(16, min(triton.next_power_of_2(max_size), 64))
    if block_n is None:
        block_n = 128 if dev.type != "cuda" else 64
    out = torch.full((n,), -1, dtype=torch.int8, device=dev)
    _group_topk_kernel[(triton.cdiv(n, block_n),)](
        s, r, gidx, group_offsets.contiguous(), kg.contiguous(), out,
        n, max_size,
        CONTRAST=contrast, BLOCK_N=block_n, BLOCK_S=block_s,
    )
    return out


def _finish(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.nonzero(mask).flatten(), mask


def group_topk_triton(scores, group_offsets, *, k=None, ratio=None, rewards=None, keep_contrast=True,
                      validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher: one program per BLOCK_N rollouts, one launch."""
    sizes, kg, contrast = _prepare(scores, group_offsets, k, ratio, rewards, keep_contrast, validate)
    raw = _group_topk_launch(scores, group_offsets, sizes, kg, rewards, contrast)
    return _finish(raw == 1)


def _global_topm_launch(scores: torch.Tensor, m: int, block: int = 1024) -> torch.Tensor:
    n = scores.numel()
    s = scores.to(torch.float32).contiguous()
    out = torch.full((n,), -1, dtype=torch.int8, device=s.device)
    _global_topm_kernel[(1,)](s, out, n, min(m, n), BLOCK=block)
    return out


def _check_m(m) -> None:
    check_int("global_topm", "m", m, lo=1)


def global_topm_triton(scores: torch.Tensor, m: int, *, validate: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher: one program (bisection + one writing pass)."""
    _check_m(m)
    if validate:
        _check_scores(scores, "global_topm")
    return _finish(_global_topm_launch(scores, m) == 1)


# ------------------------------------------------------------------ references
def _group_topk_mask_reference(scores, sizes, kg, rewards, contrast) -> torch.Tensor:
    n = scores.numel()
    dev = scores.device
    s = scores.to(torch.float32)
    g = sizes.numel()
    gidx = torch.repeat_interleave(torch.arange(g, device=dev), sizes, output_size=n)
    starts = torch.cumsum(sizes, 0) - sizes
    # Order by (group, score desc, index asc): stable sort by score, then stable sort by group.
    p1 = torch.sort(s, descending=True, stable=True).indices
    perm = p1[torch.sort(gidx[p1], stable=True).indices]
    rank = torch.empty(n, dtype=torch.int64, device=dev)
    rank[perm] = torch.arange(n, device=dev) - starts[gidx[perm]]
    k_row = kg.to(torch.int64)[gidx]
    keep = rank < k_row
    if not contrast:
        return keep
    r = rewards.to(torch.float32)
    rmin = torch.full((g,), float("inf"), device=dev).scatter_reduce(0, gidx, r, "amin")
    rmax = torch.full((g,), -float("inf"), device=dev).scatter_reduce(0, gidx, r, "amax")
    pos = r > rmin[gidx]
    big = torch.full((g,), n, dtype=torch.int64, device=dev)
    best_pos = big.scatter_reduce(0, gidx[pos], rank[pos], "amin")
    best_neg = big.clone().scatter_reduce(0, gidx[~pos], rank[~pos], "amin")
    own = torch.where(pos, best_pos[gidx], best_neg[gidx])
    other = torch.where(pos, best_neg[gidx], best_pos[gidx])
    kp = k_row.clamp_min(2)
    keep_mixed = (rank < kp - 1) | ((rank == kp - 1) & (other < kp)) | ((rank == own) & (own >= kp))
    return torch.where((rmax > rmin)[gidx], keep_mixed, keep)


def group_topk_reference(scores, group_offsets, *, k=None, ratio=None, rewards=None, keep_contrast=True,
                         validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectorized PyTorch reference (two stable sorts, no loop over groups); the CPU path."""
    sizes, kg, contrast = _prepare(scores, group_offsets, k, ratio, rewards, keep_contrast, validate)
    return _finish(_group_topk_mask_reference(scores, sizes, kg, rewards, contrast))


def global_topm_reference(scores: torch.Tensor, m: int, *, validate: bool = True
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable descending sort, first m."""
    _check_m(m)
    if validate:
        _check_scores(scores, "global_topm")
    n = scores.numel()
    order = torch.sort(scores.to(torch.float32), descending=True, stable=True).indices
    mask = torch.zeros(n, dtype=torch.bool, device=scores.device)
    mask[order[: min(m, n)]] = True
    return _finish(mask)


# ------------------------------------------------------------------ dispatchers
def group_topk(scores: torch.Tensor, group_offsets: torch.Tensor, *, k: int | None = None,
               ratio: float | None = None, rewards: torch.Tensor | None = None, keep_contrast: bool = True,
               backend: str = "auto", validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices int64 ascending, mask bool [N]) of the rollouts kept per group (rules: module doc).
    backend: one of validation.BACKENDS ("cpu" is the vectorized reference)."""
    dev = scores.device if isinstance(scores, torch.Tensor) else None
    fn = group_topk_triton if use_triton(backend, dev, "group_topk") else group_topk_reference
    return fn(scores, group_offsets, k=k, ratio=ratio, rewards=rewards, keep_contrast=keep_contrast,
              validate=validate)


def global_topm(scores: torch.Tensor, m: int, *, backend: str = "auto", validate: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices int64 ascending, mask bool [N]) of the m best scores (all of them when m >= N)."""
    dev = scores.device if isinstance(scores, torch.Tensor) else None
    fn = global_topm_triton if use_triton(backend, dev, "global_topm") else global_topm_reference
    return fn(scores, m, validate=validate)
