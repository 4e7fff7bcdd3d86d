"""Issue 17's five cases on every features path, against float64 arithmetic written here:
prints what each path gives. Usage: TRITON_INTERPRET=1 python tools/numerics_check.py"""
import torch

from rollout_bandits import RolloutBatch
from rollout_bandits.kernels import FEATURE_INDEX, FeatureConfig, rollout_features

BACKENDS = ("cpu", "reference", "triton")


def feats(batch, backend, cfg=None):
    return rollout_features(batch, cfg, backend=backend).double()


def case1():
    b = RolloutBatch(token_logprobs=-torch.rand(7), offsets=torch.arange(8), reward=torch.full((7,), 100.1),
                     group_offsets=torch.tensor([0, 7]))
    for be in BACKENDS:
        f = feats(b, be)
        print(f"1 all-equal group [{be}]: std {f[:, FEATURE_INDEX['group_reward_std']].abs().max().item():.3g}, "
              f"|advantage| {f[:, FEATURE_INDEX['advantage']].abs().max().item():.3g} (expected 0, 0)")


def case2():
    lo = torch.finfo(torch.bfloat16).min
    lp = torch.tensor([lo, lo, -1.0], dtype=torch.bfloat16)
    b = RolloutBatch(token_logprobs=lp, offsets=torch.tensor([0, 3]), reward=torch.ones(1),
                     group_offsets=torch.tensor([0, 1]))
    want = lp.double().mean().item()
    for be in BACKENDS:
        try:
            got = f"{feats(b, be)[0, FEATURE_INDEX['logp_mean']].item():.6g}"
        except ValueError as e:
            got = f"ValueError: {e}"
        print(f"2 bf16 near its minimum [{be}]: logp_mean {got} (float64 {want:.6g})")


def case3():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    lp = -1e4 + torch.rand(n, generator=g)
    b = RolloutBatch(token_logprobs=torch.cat([lp, -torch.ones(1)]), offsets=torch.tensor([0, n, n + 1]),
                     reward=torch.tensor([1.0, 0.0]), group_offsets=torch.tensor([0, 2]))
    want = lp.double().mean().item()
    ulp = torch.finfo(torch.float32).eps * abs(want) / 2
    for be in ("cpu", "reference"):
        got = feats(b, be)[0, FEATURE_INDEX["logp_mean"]].item()
        print(f"3 200k-token mean [{be}]: off by {abs(got - want):.3g} = {abs(got - want) / ulp:.2f} float32 half-ulps")


def case4():
    cfg = FeatureConfig(low_quantile=0.65)
    for n in (181, 341, 361, 381):
        lp = -torch.arange(1, n + 1, dtype=torch.float32)  # the k-th smallest is -(n - k)
        b = RolloutBatch(token_logprobs=lp, offsets=torch.tensor([0, n]), reward=torch.ones(1),
                         group_offsets=torch.tensor([0, 1]))
        rank = (13 * (n - 1)) // 20  # floor(q (n - 1)) in integers
        for be in BACKENDS:
            got = feats(b, be, cfg)[0, FEATURE_INDEX["logp_low_quantile"]].item()
            print(f"4 q=0.65 n={n} [{be}]: rank {int(n + got)} (exact {rank})")


def case5():
    lo, hi = torch.finfo(torch.bfloat16).min, torch.finfo(torch.bfloat16).max
    lp = torch.tensor([lo, -1.0], dtype=torch.bfloat16)
    cur = torch.tensor([hi, -1.0], dtype=torch.bfloat16)
    b = RolloutBatch(token_logprobs=lp, offsets=torch.tensor([0, 2]), reward=torch.ones(1),
                     group_offsets=torch.tensor([0, 1]), cur_logprobs=cur)
    for be in BACKENDS:
        try:
            f = feats(b, be)
            print(f"5 overflowing log-ratio [{be}]: max {f[0, FEATURE_INDEX['log_ratio_abs_max']].item():.5g}")
        except ValueError as e:
            print(f"5 overflowing log-ratio [{be}]: ValueError: {e}")


for c in (case1, case2, case3, case4, case5):
    c()
