"""Holding float32 features to the float64 oracle (kernels/naive.py) with tolerances from an error model.

Every features path computes each statistic in float64 and rounds it to float32 once, so

    |got - exact| <= u32 |exact| + (float64 error)          u32 = 2**-24, float32's unit roundoff

plus a float64 double-rounding term (u64 |exact|). The float64 error of a sum of n terms is at most
(n + 2) u64 times the sum of their magnitudes (sequential bound, the oracle's fsum being exact); it
is carried through each statistic below with that statistic's own scale, so a feature whose inputs
make it exactly 0 (an all-equal group's std and advantage) must come out exactly 0.
"""

from __future__ import annotations

import math

import torch

from rollout_bandits import RolloutBatch
from rollout_bandits.kernels import FEATURE_INDEX, FEATURE_NAMES, FeatureConfig
from rollout_bandits.kernels.naive import rollout_features_naive

U32 = 2.0 ** -24
U64 = 2.0 ** -53
F = FEATURE_INDEX


def _mean_abs(v: torch.Tensor) -> tuple[float, int]:
    return (float(v.abs().mean()) if v.numel() else 0.0), v.numel()


def float64_error_bound(batch: RolloutBatch, want: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """[N, D]: bound on each path's float64 error before its one rounding to float32."""
    atol = torch.zeros_like(want)
    off = batch.offsets.tolist()
    mask = batch.mask_nonfinite
    for i in range(batch.num_rollouts):
        lp = batch.token_logprobs[off[i]:off[i + 1]].double()
        keep = torch.isfinite(lp) if mask else torch.ones_like(lp, dtype=torch.bool)
        m, n = _mean_abs(lp[keep])
        atol[i, F["logp_mean"]] = (n + 2) * U64 * m
        if batch.token_entropy is not None:
            e = batch.token_entropy[off[i]:off[i + 1]].double()
            m, n = _mean_abs(e[torch.isfinite(e)] if mask else e)
            atol[i, F["entropy_mean"]] = (n + 2) * U64 * m
        if batch.cur_logprobs is not None:
            c = batch.cur_logprobs[off[i]:off[i + 1]].double()
            both = keep & torch.isfinite(c)
            m, n = _mean_abs(c[both] - lp[both])
            atol[i, F["log_ratio_abs_mean"]] = (n + 3) * U64 * m
    go = batch.group_offsets.tolist()
    r = batch.reward.double()
    for g in range(len(go) - 1):
        a, b = go[g], go[g + 1]
        rg = r[a:b]
        dev = float((rg - want[a:b, F["group_reward_mean"]]).abs().max())
        size = b - a
        atol[a:b, F["group_reward_mean"]] = (size + 3) * U64 * float(rg.abs().max())
        atol[a:b, F["group_reward_std"]] = (size + 4) * U64 * dev
        atol[a:b, F["advantage"]] = (size + 6) * U64 * dev / (want[a, F["group_reward_std"]] + cfg.std_eps)
    return atol


def assert_matches_oracle(got: torch.Tensor, batch: RolloutBatch, cfg: FeatureConfig | None = None,
                          label: str = "") -> None:
    cfg = cfg or FeatureConfig()
    batch = batch.to("cpu")
    want = rollout_features_naive(batch, cfg)
    got = got.detach().cpu()
    assert got.shape == want.shape and got.dtype == torch.float32, label
    tol = (U32 + U64) * want.abs() + float64_error_bound(batch, want, cfg)
    same = got == want.float()  # also +-inf where the exact value is beyond float32
    bad = ~(same | ((got.double() - want).abs() <= tol))
    if bool(bad.any()):
        i, j = (int(v) for v in torch.nonzero(bad)[0])
        err = float((got[i, j].double() - want[i, j]).abs())
        w32 = want[i, j].float()
        ulps = err / float((torch.nextafter(w32, torch.tensor(math.inf)) - w32).abs())
        raise AssertionError(f"{label}: {FEATURE_NAMES[j]} of rollout {i}: got {float(got[i, j])!r}, "
                             f"float64 oracle {float(want[i, j])!r} (error {err:.3g} = {ulps:.2f} float32 ulp, "
                             f"tolerance {float(tol[i, j]):.3g}); {int(bad.sum())} entries off")


def _gamma(n: int) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative forward error bound of an n-term float32
    dot product (any summation order, FMA or not)."""
    return n * U32 / (1 - n * U32)


def ucb_error_bound(x: torch.Tensor, w) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bounds [N] on |float32 - exact| of (score, mean, bonus) of ucb_score, by running forward error
    analysis: each layer's dot products (gamma_n on |x| |W| + |b|), the error carried in through
    |W| and the activation's Lipschitz constant (1 for ReLU, 1.13 for GELU), GELU's own evaluation
    (libdevice / numpy erf within 2 ulp, plus 3 roundings: 6 u |z|), then the quadratic form and
    the square root, whose error is min(sqrt(dq), dq / sqrt(q)) for a quadratic-form error dq."""
    d64 = lambda t: t.detach().double().cpu()  # noqa: E731
    xs = d64(x)
    w1, b1, w2, b2, w3, b3 = (d64(t) for t in (w.w1, w.b1, w.w2, w.b2, w.w3, w.b3))
    z = d64(w.zinv) if w.zinv is not None else torch.diag(d64(w.zinv_diag))
    d, h = w1.shape
    gelu = w.activation == "gelu"
    lip = 1.13 if gelu else 1.0

    def act(v):
        return 0.5 * v * (1 + torch.erf(v / math.sqrt(2))) if gelu else v.clamp_min(0)

    def layer(a, e_a, wm, bv):
        za = a @ wm + bv
        e_z = e_a @ wm.abs() + _gamma(wm.shape[0] + 1) * ((a.abs() + e_a) @ wm.abs() + bv.abs())
        return act(za), lip * e_z + (6 * U32 * za.abs() if gelu else 0.0)

    h1, e_h1 = layer(xs, torch.zeros_like(xs), w1, b1)
    phi, e_phi = layer(h1, e_h1, w2, b2)
    p_abs = phi.abs() + e_phi
    mean = phi @ w3 + b3
    e_mean = e_phi @ w3.abs() + _gamma(h + 1) * (p_abs @ w3.abs() + b3.abs())
    quad = ((phi @ z) * phi).sum(1).clamp_min(0)
    qa = ((p_abs @ z.abs()) * p_abs).sum(1)
    e_quad = 2 * ((e_phi @ z.abs()) * p_abs).sum(1) + _gamma(2 * h + 1) * qa
    gamma = float(w.gamma)
    bonus = gamma * quad.sqrt()
    e_bonus = gamma * torch.minimum(e_quad.sqrt(), e_quad / quad.sqrt().clamp_min(1e-300)) + 2 * U32 * bonus
    e_score = e_mean + e_bonus + U32 * (mean + bonus).abs()
    return e_score, e_mean, e_bonus
