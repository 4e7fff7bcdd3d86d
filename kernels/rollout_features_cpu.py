"""The fast CPU backend of rollout_features (backend "cpu"; "auto" on CPU tensors).

Same definitions, masking rule and numerics as kernels/rollout_features.py
(float64 sums and |log ratio|, one rounding to float32 at the end), computed
with numpy's segmented reductions: C loops over the flat streams, no row index
and no padding, and the exact quantile by introselect. numpy is used on the CPU
only because its `reduceat` and `partition` are 3-10x faster there than
`segment_reduce` and `topk`.
"""

from __future__ import annotations

import numpy as np
import torch

from rollout_bandits.batch import RolloutBatch
from rollout_bandits.kernels.feature_spec import (
    FeatureConfig,
    assemble,
    empty_features,
    max_len,
    quantile_rank,
)
from rollout_bandits.validation import fail


def rollout_features_cpu(batch: RolloutBatch, config: FeatureConfig | None = None,
                         validate: bool = True) -> torch.Tensor:
    """[N, NUM_FEATURES] float32 contexts of a batch of CPU tensors."""
    cfg = config or FeatureConfig()
    if validate:
        batch.validate()
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
        stats[:, rows] = _token_stats(batch, cfg.low_quantile, starts, lens[rows])
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
