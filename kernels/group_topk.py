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
BLOCK_S chunks, so ragged groups of any size work in one launch. Each
program finds its rollouts' groups (bisection over the offsets) and k_g itself,
and bounds its loops by the largest group in its tile: the launch reads nothing
on the host. `global_topm`
is one program: an exact bisection over order-preserving int32 keys (32 passes
over the scores, which the buffer keeps small) followed by one writing pass
that takes the ties at the threshold lowest index first.
"""

from __future__ import annotations

import torch

from rollout_bandits.kernels._triton import tl, triton
from rollout_bandits.kernels.launch import LaunchConfig, launch_config, new_output
from rollout_bandits.validation import check_float, check_int, check_tensor, fail, shape_str, use_triton


# --------------------------------------------------------------------- kernels
@triton.jit
def _beats(s_j, j, s_i, i):
    # j is ordered before i: higher score, ties by lower index.
    return (s_j > s_i) | ((s_j == s_i) & (j < i))


@triton.jit
def group_of(p_goff, o_i, G, group_steps):
    """Group of rollout(s) o_i: the last g with group_offsets[g] <= o_i, by bisection over the G + 1
    offsets (group_steps = G.bit_length() halvings), so no per-rollout group index is built on
    the host. o_i a scalar or a block of rollout numbers; int32 result of the same shape."""
    g_lo = tl.zeros_like(o_i).to(tl.int32)
    g_hi = g_lo + (G - 1)
    for _ in range(group_steps):
        g_mid = (g_lo + g_hi + 1) // 2
        ok = tl.load(p_goff + g_mid).to(tl.int64) <= o_i
        g_lo = tl.where(ok, g_mid, g_lo)
        g_hi = tl.where(ok, g_hi, g_mid - 1)
    return g_lo


@triton.jit(do_not_specialize=["N", "G", "group_steps", "k", "ratio"])
def _group_topk_kernel(
    p_s, p_r, p_goff, p_out,
    N, G, group_steps, k, ratio: tl.float64,
    CONTRAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
):
    i_n = tl.program_id(0)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    o_s = tl.arange(0, BLOCK_S)
    # [BLOCK_N]
    b_s = tl.load(p_s + o_n, mask=m_n, other=0.0)
    b_g = group_of(p_goff, tl.where(m_n, o_n, 0), G, group_steps)
    b_gs = tl.load(p_goff + b_g, mask=m_n, other=0).to(tl.int32)
    b_ge = tl.load(p_goff + b_g + 1, mask=m_n, other=0).to(tl.int32)
    b_size = b_ge - b_gs
    # k_g: min(k, n_g) for a fixed k (k > 0), else ceil(ratio * n_g) in [1, n_g] (float64, 1e-9 slack).
    if k > 0:
        b_k = tl.minimum(b_size, k)
    else:
        b_kr = tl.ceil(b_size.to(tl.float64) * tl.full([], ratio, tl.float64) - 1e-9).to(tl.int32)
        b_k = tl.minimum(tl.maximum(b_kr, 1), b_size)
    # The largest group in this tile bounds the loops over group members.
    tile_max = tl.max(tl.where(m_n, b_size, 0), axis=0)

    if CONTRAST:
        # Pass 1: the group's reward range.
        b_rmin = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
        b_rmax = tl.full([BLOCK_N], -float("inf"), dtype=tl.float32)
        for j0 in range(0, tile_max, BLOCK_S):
            o_j = b_gs[:, None] + j0 + o_s[None, :]
            m_j = m_n[:, None] & (o_j < b_ge[:, None])
            # [BLOCK_N, BLOCK_S]
            b_rj = tl.load(p_r + o_j, mask=m_j, other=0.0)
            b_rmin = tl.minimum(b_rmin, tl.min(tl.where(m_j, b_rj, float("inf")), axis=1))
            b_rmax = tl.maximum(b_rmax, tl.max(tl.where(m_j, b_rj, -float("inf")), axis=1))
        # Pass 2: the best rollout of each kind (score, then lowest index).
        b_ps = tl.full([BLOCK_N], -float("inf"), dtype=tl.float32)
        b_pi = tl.zeros([BLOCK_N], dtype=tl.int32) + N
        b_ns = tl.full([BLOCK_N], -float("inf"), dtype=tl.float32)
        b_ni = tl.zeros([BLOCK_N], dtype=tl.int32) + N
        for j0 in range(0, tile_max, BLOCK_S):
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
    for j0 in range(0, tile_max, BLOCK_S):
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


@triton.jit(do_not_specialize=["N", "M"])
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


def _check_k(k: int | None, ratio: float | None) -> tuple[int | None, float | None]:
    if (k is None) == (ratio is None):
        fail("group_topk", "k", f"k={k!r} and ratio={ratio!r}", "exactly one of k and ratio")
    if k is not None:
        return check_int("group_topk", "k", k, lo=1), None
    return None, check_float("group_topk", "ratio", ratio, 0.0, 1.0, lo_open=True)


def _group_k(sizes: torch.Tensor, k: int | None, ratio: float | None) -> torch.Tensor:
    """k_g per group, int32 [G], in [1, n_g] (a k above n_g is clipped to n_g)."""
    k, ratio = _check_k(k, ratio)
    if k is not None:
        kg = sizes.clamp_max(k)
    else:
        kg = torch.ceil(sizes.to(torch.float64) * ratio - 1e-9).to(torch.int64)
        kg = torch.minimum(kg.clamp_min(1), sizes)
    return kg.to(torch.int32)


def _check_groups(scores: torch.Tensor, group_offsets: torch.Tensor, rewards: torch.Tensor | None,
                  check_values: bool = True) -> None:
    """Shapes, dtypes and devices; with check_values also the offsets and rewards themselves."""
    n = scores.numel()
    go = check_tensor("group_topk", "group_offsets", group_offsets, dim=1, dtypes=(torch.int32, torch.int64),
                      device=scores.device, expected="[G+1] with G >= 1")
    if go.numel() < 2:
        fail("group_topk", "group_offsets", f"shape {shape_str(go)}", "[G+1] with G >= 1")
    if check_values:
        sizes = go[1:] - go[:-1]
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


def _prepare(scores, group_offsets, k, ratio, rewards, keep_contrast, validate):
    """Checks the inputs (reading them only when validating); (k, ratio, contrast)."""
    if validate:
        _check_scores(scores, "group_topk")
    _check_groups(scores, group_offsets, rewards, check_values=validate)
    k, ratio = _check_k(k, ratio)
    return k, ratio, bool(keep_contrast) and rewards is not None


# ------------------------------------------------------------------ launchers
def topk_plan(contrast: bool, device_type: str = "cuda", block_n: int | None = None) -> LaunchConfig:
    """Block sizes and warps of a group_topk launch: independent of the data (group sizes of any
    length are read in BLOCK_S chunks, the loop bounded in the kernel)."""
    if block_n is None:
        # Under the interpreter a program costs ~0.5 ms whatever its size: big tiles.
        block_n = 128 if device_type != "cuda" else 32
    return launch_config(num_warps=4, CONTRAST=contrast, BLOCK_N=block_n, BLOCK_S=32)


def _group_topk_launch(scores, group_offsets, k, ratio, rewards, contrast, poison=True,
                       block_n=None) -> torch.Tensor:
    """Runs the kernel; the int8 mask, 1 = kept (poisoned with -1 where the kernel never wrote).
    Reads no device data on the host."""
    n = scores.numel()
    plan = topk_plan(contrast, scores.device.type, block_n)
    out = new_output((n,), poison, scores.device, torch.int8)
    _group_topk_kernel[(triton.cdiv(n, dict(plan.meta)["BLOCK_N"]),)](
        *_topk_args(scores, group_offsets, k, ratio, rewards if contrast else None, out), **plan.kwargs())
    return out


def _topk_args(scores, group_offsets, k, ratio, rewards, out) -> tuple:
    """The kernel's arguments (everything but the constexprs); rewards None without contrast."""
    s = scores.to(torch.float32).contiguous()
    r = rewards.to(torch.float32).contiguous() if rewards is not None else s
    g = group_offsets.numel() - 1
    return (s, r, group_offsets.contiguous(), out, s.numel(), g, g.bit_length(), k or 0, float(ratio or 0.0))


def mask_of(raw: torch.Tensor, poisoned: bool) -> torch.Tensor:
    """The bool mask of a kernel's int8 0/1 output: a free view, or a comparison when the output
    was poisoned (the view of a -1 would not be a valid bool)."""
    return raw == 1 if poisoned else raw.view(torch.bool)


def _finish(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.nonzero(mask).flatten(), mask


def group_topk_mask(scores, group_offsets, *, k=None, ratio=None, rewards=None, keep_contrast=True,
                    validate: bool = True) -> torch.Tensor:
    """The bool mask [N] of group_topk on the Triton path, without the index list (whose
    `nonzero` waits for the GPU): with validate=False nothing is read on the host."""
    k, ratio, contrast = _prepare(scores, group_offsets, k, ratio, rewards, keep_contrast, validate)
    return mask_of(_group_topk_launch(scores, group_offsets, k, ratio, rewards, contrast, validate), validate)


def group_topk_triton(scores, group_offsets, *, k=None, ratio=None, rewards=None, keep_contrast=True,
                      validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher: one program per BLOCK_N rollouts, one launch (plus the index list's nonzero)."""
    return _finish(group_topk_mask(scores, group_offsets, k=k, ratio=ratio, rewards=rewards,
                                   keep_contrast=keep_contrast, validate=validate))


def topm_plan(device_type: str = "cuda", block: int | None = None) -> LaunchConfig:
    """global_topm: one program, BLOCK scores per pass (independent of N)."""
    return launch_config(num_warps=4 if device_type == "cuda" else 1, BLOCK=block or 1024)


def _global_topm_launch(scores: torch.Tensor, m: int, block: int | None = None, poison: bool = True) -> torch.Tensor:
    n = scores.numel()
    s = scores.to(torch.float32).contiguous()
    out = new_output((n,), poison, s.device, torch.int8)
    _global_topm_kernel[(1,)](s, out, n, min(m, n), **topm_plan(s.device.type, block).kwargs())
    return out


def _check_m(m) -> None:
    check_int("global_topm", "m", m, lo=1)


def global_topm_triton(scores: torch.Tensor, m: int, *, validate: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher: one program (bisection + one writing pass)."""
    _check_m(m)
    if validate:
        _check_scores(scores, "global_topm")
    return _finish(mask_of(_global_topm_launch(scores, m, poison=validate), validate))


# ------------------------------------------------------------------ references
def _group_topk_mask_reference(scores, sizes, kg, rewards, contrast) -> torch.Tensor:
    n = scores.numel()
    dev = scores.device
    s = scores.to(torch.float32)
    g = sizes.numel()
    gidx = torch.repeat_interleave(torch.arange(g, device=dev), sizes, output_size=n)
    starts = torch.cumsum(sizes, 0) - sizes
    # Order by (group, score desc, index asc): one stable sort of group << 32 | the descending order
    # key of the score (float32 bits whose signed order is the float order, -0.0 as 0.0).
    bits = s.contiguous().view(torch.int32)
    key = torch.where(s == 0, 0, bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(torch.int64)
    perm = torch.sort((gidx << 32) | (2**31 - 1 - key), stable=True).indices
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
    best_pos = big.scatter_reduce(0, gidx, torch.where(pos, rank, n), "amin")
    best_neg = big.clone().scatter_reduce(0, gidx, torch.where(pos, n, rank), "amin")
    own = torch.where(pos, best_pos[gidx], best_neg[gidx])
    other = torch.where(pos, best_neg[gidx], best_pos[gidx])
    kp = k_row.clamp_min(2)
    keep_mixed = (rank < kp - 1) | ((rank == kp - 1) & (other < kp)) | ((rank == own) & (own >= kp))
    return torch.where((rmax > rmin)[gidx], keep_mixed, keep)


def group_topk_reference(scores, group_offsets, *, k=None, ratio=None, rewards=None, keep_contrast=True,
                         validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectorized PyTorch reference (two stable sorts, no loop over groups); the CPU path."""
    k, ratio, contrast = _prepare(scores, group_offsets, k, ratio, rewards, keep_contrast, validate)
    sizes = (group_offsets[1:] - group_offsets[:-1]).to(torch.int64)
    return _finish(_group_topk_mask_reference(scores, sizes, _group_k(sizes, k, ratio), rewards, contrast))


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
