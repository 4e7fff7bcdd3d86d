"""The fast CPU backend of rollout_features (backend "cpu"; "auto" on CPU tensors).

Same definitions, masking rule and numerics as kernels/rollout_features.py
(float64 sums and |log ratio|, one rounding to float32 at the end). Two
implementations of the per-rollout token statistics:
- with numba installed (the `fast-cpu` extra), one compiled pass over each
  rollout that reads every stream once, sums in float64 and collects the
  quantile's candidates (the tokens under a per-row threshold read off a
  sample of the stream); the exact k-th smallest is then selected among the
  candidates, or among the whole rollout when too few fall under it;
- without numba, numpy's segmented reductions (C loops over the flat streams,
  no row index and no padding) and the exact quantile by introselect on the
  candidates (numpy's `reduceat` and `partition` are 3-10x faster on the CPU
  than `segment_reduce` and `topk`).
Both give the same values: the sums differ only in float64 summation order.
"""

from __future__ import annotations

import numpy as np
import torch

from rollout_bandits.batch import RolloutBatch
from rollout_bandits.kernels.feature_spec import (
    QUANTILE_SLACK,
    FeatureConfig,
    assemble,
    empty_features,
    max_len,
    prepare,
    quantile_rank,
)
from rollout_bandits.validation import fail

try:  # optional: the `fast-cpu` extra
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None


def rollout_features_cpu(batch: RolloutBatch, config: FeatureConfig | None = None,
                         validate: bool = True) -> torch.Tensor:
    """[N, NUM_FEATURES] float32 contexts of a batch of CPU tensors."""
    cfg = prepare(batch, config, validate)
    if batch.device.type != "cpu":
        fail("rollout_features", "backend", f"'cpu' with tensors on {batch.device}", "CPU tensors")
    n = batch.num_rollouts
    if n == 0:
        return empty_features(batch)
    _, denom = max_len(batch)
    lengths = batch.lengths
    lens = lengths.numpy()
    # reduceat reads an empty segment as one token: rollouts with 0 tokens are left at 0.
    rows = np.flatnonzero(lens)
    stats = np.zeros((6, n))
    if rows.size:
        starts = batch.offsets[:-1].to(torch.int64).numpy()[rows]
        token_stats = _token_stats_numba if numba is not None else _token_stats
        stats[:, rows] = token_stats(batch, cfg.low_quantile, starts, lens[rows])
    lp_mean, lp_min, lp_q, ent_mean, r_mean, r_max = (torch.from_numpy(s) for s in stats)
    return assemble(batch, cfg, lp_mean, lp_min, lp_q, ent_mean, r_mean, r_max, lengths.double() / denom)


def _stream(batch: RolloutBatch, name: str) -> np.ndarray:
    return getattr(batch, name).detach().float().contiguous().numpy()


def _mean(x: np.ndarray, counted: np.ndarray | None, starts: np.ndarray, lens: np.ndarray):
    """(float64 mean over each row's counted tokens (0 with none), the counts); counted None: all."""
    if counted is None:
        return np.add.reduceat(x, starts, dtype=np.float64) / lens, lens
    cnt = np.add.reduceat(counted, starts, dtype=np.int64)
    return np.add.reduceat(np.where(counted, x, 0), starts, dtype=np.float64) / np.maximum(cnt, 1), cnt


def _token_stats(batch: RolloutBatch, q: float, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """[6, rows] float64: log-prob mean / min / low quantile, entropy mean, |log ratio| mean / max of
    the rows starting at `starts` (each holding >= 1 token)."""
    mask = batch.mask_nonfinite
    zero = np.zeros(lens.size)
    lp = _stream(batch, "token_logprobs")
    valid = np.isfinite(lp) if mask else None
    lp_mean, cnt = _mean(lp, valid, starts, lens)
    # Uncounted tokens become +inf: never the min, and past the quantile's rank (k < count).
    lp_in = np.where(valid, lp, np.float32(np.inf)) if mask else lp
    has = cnt > 0
    lp_min = np.where(has, np.minimum.reduceat(lp_in, starts), 0.0)
    k = quantile_rank(q, torch.from_numpy(np.asarray(cnt))).numpy()
    lp_q = np.where(has, kth_smallest_rows(lp_in, starts, lens, k), 0.0)
    ent_mean = zero
    if batch.token_entropy is not None:
        ent = _stream(batch, "token_entropy")
        ent_mean, _ = _mean(ent, np.isfinite(ent) if mask else None, starts, lens)
    r_mean = r_max = zero
    if batch.cur_logprobs is not None:
        cur = _stream(batch, "cur_logprobs")
        ratio = np.subtract(cur, lp, dtype=np.float64)
        np.abs(ratio, out=ratio)
        counted = (valid & np.isfinite(cur)) if mask else None
        if mask:
            ratio[~counted] = 0.0
        r_mean, _ = _mean(ratio, counted, starts, lens)
        r_max = np.maximum.reduceat(ratio, starts)
    return np.stack([lp_mean, lp_min, lp_q, ent_mean, r_mean, r_max])


def _kth_smallest_dense(stream: np.ndarray, starts: np.ndarray, lens: np.ndarray, k: np.ndarray,
                        num_buckets: int = 4) -> np.ndarray:
    """Exact k_i-th smallest (0-based) of the rows stream[starts_i : starts_i + lens_i].

    One np.partition over dense [rows, W] blocks. Ragged rows are aligned so that every row's
    k_i-th element lands in one column K: row i is read as the window
    stream[start_i - (K - k_i) : ...] (a plain row copy, no per-token scatter) whose K - k_i
    leading entries are set to -inf and whose entries past the row's end to +inf. Rows go in
    `num_buckets` blocks of similar length so that the padding stays small.
    """
    n = lens.size
    out = np.empty(n, dtype=np.float32)
    if n == 0:
        return out
    if int(lens.min()) == int(lens.max()) and np.array_equal(starts, np.arange(n) * int(lens[0])) \
            and stream.size == n * int(lens[0]):
        kk = int(k[0])
        return np.partition(stream.reshape(n, int(lens[0])), kk, axis=1)[:, kk]
    order = np.argsort(lens, kind="stable")
    # Pad the stream on both sides (once) so that every window is in bounds.
    pad_lo, pad_hi = int(k.max()), int((lens + k.max() - k).max())
    ext = np.concatenate([np.full(pad_lo, -np.inf, np.float32), stream, np.full(pad_hi, np.inf, np.float32)])
    for rows in np.array_split(order, min(num_buckets, n)):
        if rows.size == 0:
            continue
        kb, lb, sb = k[rows], lens[rows], starts[rows]
        kmax = int(kb.max())
        shift = kmax - kb
        width = int((lb + shift).max())
        win = np.lib.stride_tricks.sliding_window_view(ext, width)
        mat = win[sb - shift + pad_lo]
        cols = np.arange(width)
        np.copyto(mat, np.float32(-np.inf), where=cols[None, :] < shift[:, None])
        np.copyto(mat, np.float32(np.inf), where=cols[None, :] >= (shift + lb)[:, None])
        mat.partition(kmax, axis=1)
        out[rows] = mat[:, kmax]
    return out


def kth_smallest_rows(lp: np.ndarray, starts: np.ndarray, lens: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Exact k_i-th smallest (0-based) of the rows lp[starts_i : starts_i + lens_i] (lens_i >= 1,
    the rows covering the stream in order).

    Candidate filter, then the dense selection on the candidates only: a per-row threshold
    t_i is read off a strided sample of the whole stream at the fraction p_i that puts,
    in expectation, k_i + 1 + 4 sqrt(k_i + 1) + 2 of the row's tokens at or below it. The
    tokens <= t_i (about (q + a few sigma) of the stream) keep their row order; a row with at
    least k_i + 1 candidates has its k_i-th smallest among them (exact); the other rows (rare
    unless rows differ strongly from the batch) are done on their full token lists. Faster than
    the dense selection on all tokens for large ragged batches (benchmarks/bench_features.py);
    with equal lengths the dense one is used.
    """
    n = lens.size
    t = lp.size
    if t < 64 * n or t < 65536 or int(lens.min()) == int(lens.max()):
        # Short rows, small batches, or equal lengths (a reshape, no gather): dense is faster.
        return _kth_smallest_dense(lp, starts, lens, k)
    stride = max(1, t // 65536)
    sample = np.sort(lp[::stride])
    need = (k + 1).astype(np.float64)
    frac = np.minimum(1.0, (need + 4.0 * np.sqrt(need) + 2.0) / lens)
    pos = np.minimum(np.ceil(frac * sample.size).astype(np.int64), sample.size - 1)
    thr = np.where(frac >= 1.0, np.float32(np.inf), sample[pos]).astype(np.float32)
    cmask = lp <= np.repeat(thr, lens)
    counts = np.add.reduceat(cmask, starts, dtype=np.int64)
    ok = counts >= k + 1
    cand = np.compress(cmask, lp)  # (much faster than lp[cmask] on a random mask)
    cstarts = np.cumsum(counts) - counts
    out = np.empty(n, dtype=np.float32)
    out[ok] = _kth_smallest_dense(cand, cstarts[ok], counts[ok], k[ok])
    if not ok.all():
        bad = ~ok
        out[bad] = _kth_smallest_dense(lp, starts[bad], lens[bad], k[bad])
    return out


# ------------------------------------------------------------------ numba
def _row_brackets(lp: np.ndarray, lens: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row, order keys lo <= hi such that, in expectation, the row's quantile (rank k) lies
    in [lo, hi] with about 5 sqrt(k + 1) + 4 of its tokens: read off a sorted strided sample of
    the whole stream at the fractions (k + 1 -+ (2.5 sqrt(k + 1) + 2)) / n. Only the work done
    depends on them: a row whose quantile falls outside is selected among all its tokens."""
    k = np.floor(q * (lens - 1) + QUANTILE_SLACK)
    need = k + 1.0
    margin = 2.5 * np.sqrt(need) + 2.0
    sample = _keys(np.sort(lp[:: max(1, lp.size // 8192)]))
    lo_frac, hi_frac = (need - margin) / lens, (need + margin) / lens
    size = sample.size
    lo = np.where(lo_frac <= 0.0, np.int32(-2**31), sample[np.clip((lo_frac * size).astype(np.int64), 0, size - 1)])
    hi = np.where(hi_frac >= 1.0, np.int32(2**31 - 1),
                  sample[np.clip(np.ceil(hi_frac * size).astype(np.int64), 0, size - 1)])
    return lo.astype(np.int32), np.maximum(hi, lo).astype(np.int32)


def _keys(x: np.ndarray) -> np.ndarray:
    """float32 -> int32 whose signed order is the float order (NaN above +inf, as on the GPU)."""
    b = x.view(np.int32)
    return b ^ ((b >> 31) & np.int32(0x7FFFFFFF))


def _token_stats_numba(batch: RolloutBatch, q: float, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """[6, rows] float64 like `_token_stats`, in one compiled pass per rollout."""
    lp = _stream(batch, "token_logprobs")
    ent = _stream(batch, "token_entropy") if batch.token_entropy is not None else lp
    cur = _stream(batch, "cur_logprobs") if batch.cur_logprobs is not None else lp
    out = np.zeros((6, lens.size))
    q_keys = np.zeros(lens.size, dtype=np.int32)
    _stats_kernel(lp, lp.view(np.int32), ent, cur, starts, lens, *_row_brackets(lp, lens, q), float(q),
                  bool(batch.mask_nonfinite), out, q_keys)
    if batch.token_entropy is None:
        out[3] = 0.0
    if batch.cur_logprobs is None:
        out[4:6] = 0.0
    has = out[1] == out[1]  # rows with a counted token (the others have NaN there)
    out[2] = np.where(has, _keys(q_keys).view(np.float32), 0.0)  # the key map is its own inverse
    out[1] = np.where(has, out[1], 0.0)
    return out


if numba is not None:
    _jit = numba.njit(cache=True, nogil=True, boundscheck=False)

    @_jit
    def _collect(lp, lp_bits, s, e, lo_key, hi_key, mask, buf):
        """Among the counted tokens of [s, e): the number whose order key is below lo_key, and the
        keys in [lo_key, hi_key], written to buf (with their number)."""
        below = m = 0
        for t in range(s, e):
            b = lp_bits[t]
            key = b ^ ((b >> 31) & 0x7FFFFFFF)
            counted = not mask or np.abs(lp[t]) < np.inf
            buf[m] = key
            below += counted & (key < lo_key)
            m += counted & (key >= lo_key) & (key <= hi_key)
        return below, m

    @_jit
    def _select(keys, m, k):
        """k-th smallest (0-based) of keys[:m], in place (quickselect, median of three)."""
        lo, hi = 0, m - 1
        while hi > lo:
            mid = (lo + hi) // 2
            a, b, c = keys[lo], keys[mid], keys[hi]
            pivot = max(min(a, b), min(max(a, b), c))
            i, j = lo, hi
            while i <= j:
                while keys[i] < pivot:
                    i += 1
                while keys[j] > pivot:
                    j -= 1
                if i <= j:
                    keys[i], keys[j] = keys[j], keys[i]
                    i += 1
                    j -= 1
            if k <= j:
                hi = j
            elif k >= i:
                lo = i
            else:
                return keys[k]
        return keys[k]

    # reassoc: the float64 sums may be taken in any order, nsz: a min / max may return either zero
    # (they compare equal); with these LLVM vectorizes the loops. No finite-math assumption, so
    # the isfinite tests of the masking rule stay.
    @numba.njit(cache=True, nogil=True, boundscheck=False, fastmath={"reassoc", "nsz"})
    def _stats_kernel(lp, lp_bits, ent, cur, starts, lens, lo_keys, hi_keys, q, mask, out, q_keys):
        """Per row: out[0, 1, 3, 4, 5] = log-prob mean and min, entropy mean, |log ratio| mean and
        max (out[1] NaN for a row with no counted token), q_keys = the order key of the quantile.
        An absent entropy or current log-prob stream comes as lp (its results are not used)."""
        buf = np.empty(lens.max(), dtype=np.int32)
        inf32 = np.float32(np.inf)
        for i in range(lens.size):
            s, e = starts[i], starts[i] + lens[i]
            s_lp = s_e = s_r = r_max = 0.0
            lp_min = inf32
            if mask:
                n_lp = n_e = n_r = 0
                for t in range(s, e):
                    x, v, c = lp[t], ent[t], cur[t]
                    fx, fv = np.abs(x) < np.inf, np.abs(v) < np.inf
                    fc = fx & (np.abs(c) < np.inf)
                    s_lp += np.float64(x) if fx else 0.0
                    n_lp += fx
                    lp_min = min(lp_min, x if fx else inf32)
                    s_e += np.float64(v) if fv else 0.0
                    n_e += fv
                    r = abs(np.float64(c) - np.float64(x)) if fc else 0.0
                    s_r += r
                    n_r += fc
                    r_max = max(r_max, r)
            else:
                n_lp = n_e = n_r = e - s
                for t in range(s, e):
                    x = lp[t]
                    s_lp += np.float64(x)
                    lp_min = min(lp_min, x)
                    s_e += np.float64(ent[t])
                    r = abs(np.float64(cur[t]) - np.float64(x))
                    s_r += r
                    r_max = max(r_max, r)
            out[0, i] = s_lp / max(n_lp, 1)
            out[3, i] = s_e / max(n_e, 1)
            out[4, i] = s_r / max(n_r, 1)
            out[5, i] = r_max
            if n_lp == 0:
                out[1, i] = np.nan
                continue
            out[1, i] = lp_min
            k = min(int(np.floor(q * (n_lp - 1) + QUANTILE_SLACK)), n_lp - 1)
            # Candidates: the counted tokens whose key is at most the row's threshold key.
            below, m = _collect(lp, lp_bits, s, e, lo_keys[i], hi_keys[i], mask, buf)
            if not below <= k < below + m:  # the quantile is outside the bracket: take the whole row
                below, m = _collect(lp, lp_bits, s, e, np.int32(-2**31), np.int32(2**31 - 1), mask, buf)
            q_keys[i] = _select(buf, m, k - below)
