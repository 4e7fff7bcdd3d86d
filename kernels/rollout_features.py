"""rollout_features: ragged token streams -> [N, D] bandit contexts, one pass.

The layout of this file is the project's kernel convention: the `@triton.jit`
kernel, its plan (block sizes from sizes the host knows, kernels/launch.py) and
launcher (checks inputs, sizes the grid), the vectorized PyTorch
reference of the same function, and the dispatcher. The fast CPU backend is
kernels/rollout_features_cpu.py, the float64 oracle that the tests hold every
path to is kernels/naive.py, and the shared pieces are kernels/feature_spec.py.

Feature definitions (docs/method.md, section 4: a superset of the paper's seven
named features [ours]):
- per rollout over its tokens: mean and min behaviour log-prob, the lower
  nearest-rank `low_quantile` of the log-probs, sorted[k] with
  k = floor(q * (n - 1)) (taken in float64 with a 1e-9 slack, so that a decimal
  q such as 0.65 gives the rank its decimal value gives), mean token entropy,
  mean and max |cur_logprob - logprob| (0 without current log-probs);
- per group: mean and population std of the reward, and the normalized
  advantage (r - mean) / (std + eps);
- per rollout fields: reward, length / max_response_len, truncation flag, age,
  reuse count, clip ratio.
A rollout with 0 tokens has 0 for each token statistic and length_frac 0.

Masking (one rule, every path): with `mask_nonfinite`, a log-prob or entropy
token that is NaN or +-inf is left out of its own stream's statistics, and a
token is in the |log ratio| statistics exactly when its log-prob and its
current log-prob are both finite; a stream with no counted token gives 0.
Without `mask_nonfinite` every token counts (validate() rejects non-finite
ones).

Numerics: every sum (token streams, rewards) is accumulated in float64 and
every statistic, the |log ratio| of each token included, is computed in
float64 and rounded to float32 once, at the end. So each feature is within
about one float32 ulp of its exact value: long rollouts lose nothing to
summation order, bf16 values near the dtype's limit do not overflow a sum, and
a group of equal rewards has exactly 0 std and advantage (deviations are taken
from a pivot, kernels/feature_spec.py). Inputs whose features float32 cannot
hold, or that the scorer would overflow, are rejected by `RolloutBatch.validate()`
(`validation.MAX_MAGNITUDE`), naming the input field; with validate=False such
a feature is +-inf, the same on every path.

Kernel: one program per rollout; its token block is one of two sizes, picked
from the mean length num_tokens / N (no device data is read to launch). A
rollout that fits its block keeps its log-probs in registers for the quantile's
32 bisection halvings; a longer one is re-read chunk by chunk (from cache). The
optional streams and fields are runtime flags and the program finds its group
by bisection over the group offsets, so one compiled kernel per block size and
stream dtype serves every batch, and the launch needs no per-rollout index.
"""

from __future__ import annotations

import torch

from rollout_bandits.batch import RolloutBatch
from rollout_bandits.kernels._triton import tl, triton
from rollout_bandits.kernels.feature_spec import (
    FEATURE_INDEX,
    FEATURE_NAMES,
    NUM_FEATURES,
    QUANTILE_SLACK,
    FeatureConfig,
    assemble,
    empty_features,
    max_len,
    prepare,
    quantile_rank,
)
from rollout_bandits.kernels.group_topk import group_of
from rollout_bandits.kernels.launch import LaunchConfig, launch_config, new_output
from rollout_bandits.kernels.rollout_features_cpu import rollout_features_cpu
from rollout_bandits.validation import resolve_backend

__all__ = ["FEATURE_INDEX", "FEATURE_NAMES", "NUM_FEATURES", "FeatureConfig", "rollout_features",
           "rollout_features_cpu", "rollout_features_reference", "rollout_features_triton"]


# --------------------------------------------------------------------- kernel
_SLACK = tl.constexpr(QUANTILE_SLACK)

# Bits of the kernel's runtime `flags` argument (runtime, not constexpr: one compiled kernel per
# block size and dtype covers every combination of optional streams and fields).
HAS_ENT, HAS_CUR, MASK_NONFINITE, HAS_AGE, HAS_REUSE, HAS_TRUNC, HAS_CLIP = (tl.constexpr(1 << i) for i in range(7))


@triton.jit
def _finite(x):
    return (x == x) & (tl.abs(x) != float("inf"))


@triton.jit
def _load(p, o_t, m_t, mask_nonfinite):
    """A chunk of a stream as float32 and the mask of its counted tokens."""
    b_x = tl.load(p + o_t, mask=m_t, other=0.0).to(tl.float32)
    if mask_nonfinite != 0:
        m_t = m_t & _finite(b_x)
    return b_x, m_t


@triton.jit
def _load_keys(p_lp, o_t, end, mask_nonfinite):
    """Order-preserving int32 keys of a chunk of log-probs (float32 bits whose signed order is the
    float order) and the mask of its counted tokens."""
    b_lp, m_t = _load(p_lp, o_t, o_t < end, mask_nonfinite)
    b = b_lp.to(tl.int32, bitcast=True)
    return b ^ ((b >> 31) & 0x7FFFFFFF), m_t


@triton.jit
def _kth_smallest(p_lp, start, end, k, o_l, mask_nonfinite, BLOCK_L: tl.constexpr):
    """Exact k-th smallest (0-based) counted log-prob of tokens [start, end): bisection over the
    int32 keys, 32 halvings, no sort and no scratch memory. A rollout of at most BLOCK_L tokens
    stays in registers; a longer one is re-read (from cache) chunk by chunk at each halving."""
    lo = tl.full([], -2147483648, dtype=tl.int64)
    hi = tl.full([], 2147483647, dtype=tl.int64)
    if end - start <= BLOCK_L:
        b_key, m_key = _load_keys(p_lp, start + o_l, end, mask_nonfinite)
        for _ in range(32):
            mid = (lo + hi) >> 1
            n_le = tl.sum((m_key & (b_key <= mid.to(tl.int32))).to(tl.int32), axis=0)
            ok = n_le >= k + 1
            hi = tl.where(ok, mid, hi)
            lo = tl.where(ok, lo, mid + 1)
    else:
        for _ in range(32):
            mid = (lo + hi) >> 1
            n_le = tl.zeros([], dtype=tl.int32)
            for c in range(start, end, BLOCK_L):
                b_kc, m_kc = _load_keys(p_lp, c + o_l, end, mask_nonfinite)
                n_le += tl.sum((m_kc & (b_kc <= mid.to(tl.int32))).to(tl.int32), axis=0)
            ok = n_le >= k + 1
            hi = tl.where(ok, mid, hi)
            lo = tl.where(ok, lo, mid + 1)
    q_key = lo.to(tl.int32)
    return (q_key ^ ((q_key >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def _sum64(b_x, m_x):
    return tl.sum(tl.where(m_x, b_x, 0.0).to(tl.float64), axis=0)


@triton.jit
def _field(p, i_n, flags, bit):
    """Per-rollout field i_n as float32, 0 when the batch does not carry it."""
    v = tl.zeros([], dtype=tl.float32)
    if (flags & bit) != 0:
        v = tl.load(p + i_n).to(tl.float32)
    return v


@triton.jit(do_not_specialize=["G", "group_steps", "len_denom", "flags"])
def _rollout_features_kernel(
    p_lp, p_ent, p_cur, p_off, p_goff, p_reward, p_age, p_reuse, p_trunc, p_clip, p_denom, p_out,
    G, group_steps, len_denom, q: tl.float64, eps: tl.float64, flags,
    D: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_G: tl.constexpr,
):
    i_n = tl.program_id(0)
    start = tl.load(p_off + i_n).to(tl.int64)
    end = tl.load(p_off + i_n + 1).to(tl.int64)
    o_l = tl.arange(0, BLOCK_L)
    mask_nonfinite = flags & MASK_NONFINITE

    # Sums in float64 scalars (one reduction per chunk), counts in int32, min / max in float32 lanes.
    s_lp = tl.zeros([], dtype=tl.float64)
    s_e = tl.zeros([], dtype=tl.float64)
    s_r = tl.zeros([], dtype=tl.float64)
    n_lp = tl.zeros([], dtype=tl.int32)
    n_e = tl.zeros([], dtype=tl.int32)
    n_r = tl.zeros([], dtype=tl.int32)
    b_min = tl.full([BLOCK_L], float("inf"), dtype=tl.float32)
    b_rmax = tl.zeros([BLOCK_L], dtype=tl.float32)
    for c in range(start, end, BLOCK_L):
        o_t = c + o_l
        # [BLOCK_L]
        b_lp, m_lp = _load(p_lp, o_t, o_t < end, mask_nonfinite)
        s_lp += _sum64(b_lp, m_lp)
        n_lp += tl.sum(m_lp.to(tl.int32), axis=0)
        b_min = tl.minimum(b_min, tl.where(m_lp, b_lp, float("inf")))
        if (flags & HAS_ENT) != 0:
            b_e, m_e = _load(p_ent, o_t, o_t < end, mask_nonfinite)
            s_e += _sum64(b_e, m_e)
            n_e += tl.sum(m_e.to(tl.int32), axis=0)
        if (flags & HAS_CUR) != 0:
            b_c, m_r = _load(p_cur, o_t, m_lp, mask_nonfinite)
            # |log ratio| in float64: finite log-probs at opposite extremes do not overflow.
            b_r = tl.where(m_r, tl.abs(b_c.to(tl.float64) - b_lp.to(tl.float64)), 0.0)
            s_r += tl.sum(b_r, axis=0)
            n_r += tl.sum(m_r.to(tl.int32), axis=0)
            b_rmax = tl.maximum(b_rmax, b_r.to(tl.float32))

    lp_mean = s_lp / tl.maximum(n_lp, 1).to(tl.float64)
    lp_min = tl.where(n_lp > 0, tl.min(b_min, axis=0), 0.0)
    ent_mean = s_e / tl.maximum(n_e, 1).to(tl.float64)
    r_mean = s_r / tl.maximum(n_r, 1).to(tl.float64)
    r_max = tl.max(b_rmax, axis=0)

    # q arrives as float64 (tl.full keeps it so under the interpreter, which passes Python floats).
    last = tl.maximum(n_lp - 1, 0).to(tl.int64)
    k = tl.minimum(tl.floor(tl.full([], q, tl.float64) * last.to(tl.float64) + _SLACK).to(tl.int64), last)
    lp_q = tl.where(n_lp > 0, _kth_smallest(p_lp, start, end, k, o_l, mask_nonfinite, BLOCK_L), 0.0)

    g = group_of(p_goff, i_n, G, group_steps)

    # Group statistics in float64, deviations from a pivot (the group's first reward): a group of
    # equal rewards has exactly 0 std and advantage. Each program re-reads its group (from cache).
    gs = tl.load(p_goff + g).to(tl.int64)
    ge = tl.load(p_goff + g + 1).to(tl.int64)
    o_g = tl.arange(0, BLOCK_G)
    r_piv = tl.load(p_reward + gs).to(tl.float64)
    s_d = tl.zeros([], dtype=tl.float64)
    for c in range(gs, ge, BLOCK_G):
        m_g = c + o_g < ge
        # [BLOCK_G]
        b_d = tl.load(p_reward + c + o_g, mask=m_g, other=0.0).to(tl.float64) - r_piv
        s_d += tl.sum(tl.where(m_g, b_d, 0.0), axis=0)
    gsize = (ge - gs).to(tl.float64)
    mean_d = s_d / gsize
    s_v = tl.zeros([], dtype=tl.float64)
    for c in range(gs, ge, BLOCK_G):
        m_g = c + o_g < ge
        b_d = tl.load(p_reward + c + o_g, mask=m_g, other=0.0).to(tl.float64) - r_piv - mean_d
        s_v += tl.sum(tl.where(m_g, b_d * b_d, 0.0), axis=0)
    g_std = tl.sqrt(s_v / gsize)
    r = tl.load(p_reward + i_n)
    dev = r.to(tl.float64) - r_piv - mean_d

    # length_frac: max_response_len from the host, else the longest rollout, reduced on the device.
    denom = len_denom.to(tl.float64)
    if len_denom <= 0:
        denom = tl.maximum(tl.load(p_denom), 1).to(tl.float64)

    p_row = p_out + i_n.to(tl.int64) * D
    tl.store(p_row + 0, r.to(tl.float32))
    tl.store(p_row + 1, (r_piv + mean_d).to(tl.float32))
    tl.store(p_row + 2, g_std.to(tl.float32))
    tl.store(p_row + 3, (dev / (g_std + tl.full([], eps, tl.float64))).to(tl.float32))
    tl.store(p_row + 4, lp_mean.to(tl.float32))
    tl.store(p_row + 5, lp_min)
    tl.store(p_row + 6, lp_q)
    tl.store(p_row + 7, ent_mean.to(tl.float32))
    tl.store(p_row + 8, r_mean.to(tl.float32))
    tl.store(p_row + 9, r_max)
    tl.store(p_row + 10, ((end - start).to(tl.float64) / denom).to(tl.float32))
    tl.store(p_row + 11, _field(p_trunc, i_n, flags, HAS_TRUNC))
    tl.store(p_row + 12, _field(p_age, i_n, flags, HAS_AGE))
    tl.store(p_row + 13, _field(p_reuse, i_n, flags, HAS_REUSE))
    tl.store(p_row + 14, _field(p_clip, i_n, flags, HAS_CLIP))


# Token block of one program: a short rollout fits one block (its quantile stays in registers).
# Two sizes only, chosen from the mean length the host knows (num_tokens / N); a rollout longer
# than its block is read in chunks.
SHORT_BLOCK = 256
LONG_BLOCK = 2048


def features_plan(num_rollouts: int, num_tokens: int, device_type: str = "cuda") -> LaunchConfig:
    """Block sizes and warps of a launch: a function of the batch's rollout and token counts only."""
    short = num_tokens <= 128 * max(num_rollouts, 1)
    block_l = SHORT_BLOCK if short else LONG_BLOCK
    warps = 2 if short else 8
    return launch_config(num_warps=warps, D=NUM_FEATURES, BLOCK_L=block_l, BLOCK_G=32 * warps)


def _features_args(batch: RolloutBatch, cfg: FeatureConfig, out: torch.Tensor) -> tuple:
    """The kernel's arguments for `batch` (everything but the constexprs): no device data is read.
    Absent optional streams and fields are left out by `flags`; their pointer is a stand-in."""
    dev = batch.device
    lp = batch.token_logprobs
    flags = MASK_NONFINITE.value if batch.mask_nonfinite else 0
    fields = []
    for name, bit, dtype in (("token_entropy", HAS_ENT, None), ("cur_logprobs", HAS_CUR, None),
                             ("age", HAS_AGE, torch.float32), ("reuse_count", HAS_REUSE, torch.float32),
                             ("truncated", HAS_TRUNC, torch.bool), ("clip_ratio", HAS_CLIP, torch.float32)):
        v = getattr(batch, name)
        if v is None:
            fields.append(lp if dtype is None else torch.empty(0, dtype=dtype, device=dev))
        else:
            flags |= bit.value
            fields.append(v if dtype is None else v.to(dtype))
    ent, cur, age, reuse, trunc, clip = fields
    g = batch.num_groups
    off = batch.offsets
    if batch.max_response_len:
        len_denom, p_denom = int(batch.max_response_len), off
    else:
        len_denom, p_denom = 0, torch.amax(off[1:] - off[:-1])
    return (lp, ent, cur, off, batch.group_offsets, batch.reward, age, reuse, trunc, clip, p_denom, out,
            g, g.bit_length(), len_denom, float(cfg.low_quantile), float(cfg.std_eps), flags)


def rollout_features_triton(batch: RolloutBatch, config: FeatureConfig | None = None,
                            validate: bool = True) -> torch.Tensor:
    """Launcher: one program per rollout, every stream read once (plus the quantile's re-reads
    from cache when a rollout is longer than its block). Reads no device data on the host."""
    cfg = prepare(batch, config, validate)
    n = batch.num_rollouts
    if n == 0:
        return empty_features(batch)
    out = new_output((n, NUM_FEATURES), validate, batch.device)
    plan = features_plan(n, batch.num_tokens, batch.device.type)
    _rollout_features_kernel[(n,)](*_features_args(batch, cfg, out), **plan.kwargs())
    return out


# ------------------------------------------------------------------ reference
def rollout_features_reference(batch: RolloutBatch, config: FeatureConfig | None = None,
                               validate: bool = True) -> torch.Tensor:
    """Vectorized PyTorch formulation (no Python loop over rollouts): the CUDA eager path and what
    torch.compile traces. float64 segment sums, an exact quantile from one topk."""
    cfg = prepare(batch, config, validate)
    n = batch.num_rollouts
    if n == 0:
        return empty_features(batch)
    dev = batch.device
    lengths = batch.lengths
    longest, denom = max_len(batch)
    mask = batch.mask_nonfinite
    lp = batch.token_logprobs.to(torch.float64)
    valid = torch.isfinite(lp) if mask else torch.ones_like(lp, dtype=torch.bool)
    # One fused float64 segment reduction over the stacked (value, counted) columns.
    cols = [torch.where(valid, lp, 0.0), valid.double()]
    if batch.token_entropy is not None:
        ent = batch.token_entropy.to(torch.float64)
        ev = torch.isfinite(ent) if mask else valid
        cols += [torch.where(ev, ent, 0.0), ev.double()]
    ratio = None
    if batch.cur_logprobs is not None:
        cur = batch.cur_logprobs.to(torch.float64)
        rv = valid & torch.isfinite(cur)
        ratio = torch.where(rv, (cur - lp).abs(), 0.0)
        cols += [ratio, rv.double()]
    sums = torch.segment_reduce(torch.stack(cols, dim=1), "sum", lengths=lengths, unsafe=True)
    means = sums[:, 0::2] / sums[:, 1::2].clamp_min(1.0)
    cnt = sums[:, 1]
    zero = torch.zeros(n, dtype=torch.float64, device=dev)
    ent_mean = means[:, 1] if batch.token_entropy is not None else zero
    r_mean, r_max = zero, zero
    if ratio is not None:
        r_mean = means[:, -1]
        r_max = torch.segment_reduce(ratio, "max", lengths=lengths, unsafe=True, initial=0.0)

    # Padded copy (uncounted tokens and padding -> +inf) for the min and the quantile.
    lp_min, lp_q = zero, zero
    if longest > 0:
        row = batch.rollout_index()
        col = torch.arange(lp.numel(), device=dev) - batch.offsets.to(torch.int64)[row]
        padded = torch.full((n, longest), float("inf"), device=dev)
        padded[row, col] = torch.where(valid, batch.token_logprobs.float(), float("inf"))
        k = quantile_rank(cfg.low_quantile, cnt)
        smallest = torch.topk(padded, int(k.max()) + 1, dim=1, largest=False, sorted=True).values
        has = cnt > 0
        lp_min = torch.where(has, smallest[:, 0], 0.0)
        lp_q = torch.where(has, smallest.gather(1, k[:, None]).squeeze(1), 0.0)
    return assemble(batch, cfg, means[:, 0], lp_min, lp_q, ent_mean, r_mean, r_max,
                    lengths.to(torch.float64) / denom)


# ------------------------------------------------------------------ dispatcher
_BACKEND_FNS = {"triton": rollout_features_triton, "reference": rollout_features_reference,
                "cpu": rollout_features_cpu}


def rollout_features(batch: RolloutBatch, config: FeatureConfig | None = None, *,
                     backend: str = "auto", validate: bool = True) -> torch.Tensor:
    """[N, len(FEATURE_NAMES)] float32 contexts. backend: one of validation.BACKENDS."""
    fn = _BACKEND_FNS[resolve_backend(backend, batch.device, "rollout_features")]
    return fn(batch, config, validate=validate)
