"""Gain signals: the arm reward the scheduler's learner regresses on.

Five signals behind one small interface (`compute_gains(name, GainInputs) -> ArmGains`,
plus the stateful `batch` signal that the Scheduler computes itself):

- `batch`  [paper]  R_t = V_{t+1} - V_t - w_e * 1[E_t > e_min] * (E_{t+1} - E_t), V the mean
  verifier reward and E the mean token entropy of the fresh batch of a round; the label of
  every rollout selected at round t, known once round t+1's fresh batch is scored. Needs
  nothing from the trainer. The entropy term stops the scheduler from favouring rollouts that
  raise entropy (the paper's ablation: without it entropy climbs and accuracy falls); the
  guard switches it off once entropy is already low, so collapse is never rewarded.
- `self`   [ours]   A_i * (mean_tok logp_{t+1}(y_i) - mean_tok logp_t(y_i)) on each pulled arm:
  how far the update moved the arm's own likelihood in its advantage's direction.
- `heldout`[ours]   the importance-sampled change of expected verifiable reward on the arm's
  prompt, measured on the group's rollouts that were NOT trained on (unbiased: they are
  on-policy samples the update never saw). Group gain
  dJ_g = mean_{j unselected} (w_j - 1) (r_j - b_g), w_j = exp(clip(log ratio)), b_g the group
  mean reward (a baseline: E[w - 1] = 0). Each of the group's pulled arms gets dJ_g / k_g, so
  the labels of a group sum to its gain.
- `probe`  [ours]   the same dJ on a fixed probe set of held-out prompts, averaged over probe
  prompts; every pulled arm of the step gets it (a set-level label, like `batch`).
- `auto`   [ours]   `heldout` for arms whose group has unselected rollouts, `self` otherwise
  (the first default; the experiments in docs/RESULTS.md made `heldout` the default: see
  SchedulerConfig's docstring for the numbers and the reasons).

What the trainer supplies for the per-arm signals: the log-probs of the same tokens under the
policy before (theta_t) and after (theta_{t+1}) the optimizer step, as flat streams with
`offsets` (see `Scheduler.gains`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rollout_bandits.batch import RolloutBatch, group_index
from rollout_bandits.kernels.feature_spec import group_reward_stats
from rollout_bandits.validation import all_finite, check_bool, check_tensor, fail, shape_str

GAIN_SIGNALS = ("batch", "self", "heldout", "probe", "auto")


def _check_streams(owner, before, after, offsets, reward, group_offsets, mask_nonfinite) -> None:
    for name, t in (("logp_before", before), ("logp_after", after)):
        check_tensor(owner, name, t, dim=1, kind="float", expected="a flat float stream [T]")
    if before.shape != after.shape:
        fail(owner, "logp_after", f"shape {shape_str(after)}", f"{shape_str(before)} (as logp_before)")
    check_tensor(owner, "offsets", offsets, dim=1, kind="int")
    if offsets.numel() < 1 or int(offsets[0]) != 0 or int(offsets[-1]) != before.numel():
        fail(owner, "offsets", f"shape {shape_str(offsets)}", f"[N+1] from 0 to T={before.numel()}")
    if bool(((offsets[1:] - offsets[:-1]) < 0).any()):
        fail(owner, "offsets", "a decrease", "non-decreasing offsets")
    n = offsets.numel() - 1
    check_tensor(owner, "reward", reward, shape=(n,), kind="float")
    check_bool(owner, "mask_nonfinite", mask_nonfinite)
    streams = (("reward", reward),) if mask_nonfinite else (("logp_before", before), ("logp_after", after),
                                                            ("reward", reward))
    for name, t in streams:
        if t.numel() and not all_finite(t):
            i = int(torch.nonzero(~torch.isfinite(t))[0])
            fail(owner, name, f"{t[i].item()} at index {i}", "finite values")
    go = check_tensor(owner, "group_offsets", group_offsets, dim=1, kind="int")
    if go.numel() < 1 or int(go[0]) != 0 or int(go[-1]) != n or bool(((go[1:] - go[:-1]) <= 0).any()):
        fail(owner, "group_offsets", f"{go.tolist() if go.numel() < 12 else shape_str(go)}",
             f"[G+1] increasing from 0 to N={n}")


@dataclass
class ProbeInputs:
    """Rollouts on the fixed probe prompts (never trained on), scored before and after the step."""

    logp_before: torch.Tensor
    logp_after: torch.Tensor
    offsets: torch.Tensor
    reward: torch.Tensor
    group_offsets: torch.Tensor
    mask_nonfinite: bool = False

    def validate(self) -> ProbeInputs:
        _check_streams("ProbeInputs", self.logp_before, self.logp_after, self.offsets, self.reward,
                       self.group_offsets, self.mask_nonfinite)
        return self


@dataclass
class GainInputs:
    """One step's rollouts (trained or not) with their log-probs before and after the update.

    `selected` marks the rollouts that were trained on (the pulled arms), `arm_ids` names them.
    `advantage` defaults to the group-normalized reward (r - mean) / (std + 1e-6).
    `mask_nonfinite`: tokens whose log-prob before or after is NaN/inf are left out of the
    log ratios (as `RolloutBatch.mask_nonfinite` leaves them out of the features); rollouts
    without tokens have a log ratio of 0.
    """

    logp_before: torch.Tensor
    logp_after: torch.Tensor
    offsets: torch.Tensor
    reward: torch.Tensor
    group_offsets: torch.Tensor
    selected: torch.Tensor
    arm_ids: torch.Tensor
    advantage: torch.Tensor | None = None
    probe: ProbeInputs | None = None
    mask_nonfinite: bool = False

    def validate(self) -> GainInputs:
        o = "GainInputs"
        _check_streams(o, self.logp_before, self.logp_after, self.offsets, self.reward, self.group_offsets,
                       self.mask_nonfinite)
        n = self.reward.numel()
        check_tensor(o, "selected", self.selected, shape=(n,), kind="bool")
        check_tensor(o, "arm_ids", self.arm_ids, shape=(n,), kind="int")
        if self.advantage is not None:
            check_tensor(o, "advantage", self.advantage, shape=(n,), kind="float")
            if not all_finite(self.advantage):
                fail(o, "advantage", "NaN or inf", "finite advantages")
        if self.probe is not None:
            self.probe.validate()
        return self


@dataclass
class ArmGains:
    arm_ids: torch.Tensor  # int64 [M]
    gains: torch.Tensor  # float32 [M]


# ---------------------------------------------------------------- helpers
def group_centered_reward(batch: RolloutBatch) -> torch.Tensor:
    """Dr.GRPO's advantage r - group mean, [N] float32 on the CPU: the reward minus its
    `group_reward_mean` feature, computed as the features compute it."""
    mean = group_reward_stats(batch, 0.0)[0].detach().cpu()  # reads the rewards and groups only
    return batch.reward.detach().cpu().float() - mean.float()


def group_advantage(reward: torch.Tensor, group_offsets: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's (r - group mean) / (group std + eps), population std."""
    gidx = group_index(group_offsets)
    g = group_offsets.numel() - 1
    r = reward.double()
    cnt = torch.zeros(g, dtype=torch.float64).index_add_(0, gidx, torch.ones_like(r))
    mean = torch.zeros(g, dtype=torch.float64).index_add_(0, gidx, r) / cnt
    var = torch.zeros(g, dtype=torch.float64).index_add_(0, gidx, (r - mean[gidx]) ** 2) / cnt
    return ((r - mean[gidx]) / (var.sqrt()[gidx] + eps)).float()


def _per_rollout_log_ratio(before, after, offsets, level: str, mask_nonfinite: bool = False) -> torch.Tensor:
    """Mean (level "token") or sum ("sequence") of log pi_after - log pi_before per rollout, over
    its finite tokens when `mask_nonfinite`; 0 for a rollout without (finite) tokens."""
    lengths = (offsets[1:] - offsets[:-1]).to(torch.int64)
    diff = (after.double() - before.double())
    count = lengths.double()
    if mask_nonfinite:
        valid = torch.isfinite(diff)
        diff = torch.where(valid, diff, 0.0)
        count = torch.segment_reduce(valid.double(), "sum", lengths=lengths)
    s = torch.segment_reduce(diff, "sum", lengths=lengths)
    return s / count.clamp_min(1.0) if level == "token" else s


def _group_gain(before, after, offsets, reward, group_offsets, heldout, *, log_ratio_clip, ratio_level,
                mask_nonfinite=False):
    """(dJ_g over the held-out rows of each group, number of held-out rows per group)."""
    gidx = group_index(group_offsets)
    g = group_offsets.numel() - 1
    lr = _per_rollout_log_ratio(before, after, offsets, ratio_level, mask_nonfinite)
    lr = lr.clamp(-log_ratio_clip, log_ratio_clip)
    r = reward.double()
    cnt = torch.zeros(g, dtype=torch.float64).index_add_(0, gidx, torch.ones_like(r))
    base = torch.zeros(g, dtype=torch.float64).index_add_(0, gidx, r) / cnt
    h = heldout.double()
    term = (lr.exp() - 1.0) * (r - base[gidx]) * h
    n_h = torch.zeros(g, dtype=torch.float64).index_add_(0, gidx, h)
    dj = torch.zeros(g, dtype=torch.float64).index_add_(0, gidx, term) / n_h.clamp_min(1.0)
    return dj, n_h


# ---------------------------------------------------------------- signals
def self_gain(inp: GainInputs, **_) -> ArmGains:
    """[ours] A_i * (mean logp_after - mean logp_before) for each pulled arm."""
    adv = inp.advantage if inp.advantage is not None else group_advantage(inp.reward, inp.group_offsets)
    moved = _per_rollout_log_ratio(inp.logp_before, inp.logp_after, inp.offsets, "token", inp.mask_nonfinite)
    gain = (adv.double() * moved).float()
    sel = inp.selected
    return ArmGains(inp.arm_ids[sel].to(torch.int64), gain[sel])


def heldout_gain(inp: GainInputs, *, log_ratio_clip: float = 2.0, ratio_level: str = "token", **_) -> ArmGains:
    """[ours] Group's importance-sampled reward gain on its unselected rollouts, split over its
    pulled arms; arms whose group has no unselected rollout get no label."""
    dj, n_h = _group_gain(inp.logp_before, inp.logp_after, inp.offsets, inp.reward, inp.group_offsets,
                          ~inp.selected, log_ratio_clip=log_ratio_clip, ratio_level=ratio_level,
                          mask_nonfinite=inp.mask_nonfinite)
    gidx = group_index(inp.group_offsets)
    g = dj.numel()
    k = torch.zeros(g, dtype=torch.float64).index_add_(0, gidx, inp.selected.double())
    keep = inp.selected & (n_h[gidx] > 0)
    gain = (dj / k.clamp_min(1.0))[gidx]
    return ArmGains(inp.arm_ids[keep].to(torch.int64), gain[keep].float())


def probe_gain(inp: GainInputs, *, log_ratio_clip: float = 2.0, ratio_level: str = "token", **_) -> ArmGains:
    """[ours] The reward gain on the probe prompts (mean over probe groups), given to every pulled arm."""
    p = inp.probe
    if p is None:
        fail("GainInputs", "probe", "None", "ProbeInputs for the 'probe' gain signal")
    dj, _ = _group_gain(p.logp_before, p.logp_after, p.offsets, p.reward, p.group_offsets,
                        torch.ones(p.reward.numel(), dtype=torch.bool),
                        log_ratio_clip=log_ratio_clip, ratio_level=ratio_level, mask_nonfinite=p.mask_nonfinite)
    sel = inp.selected
    return ArmGains(inp.arm_ids[sel].to(torch.int64),
                    torch.full((int(sel.sum()),), float(dj.mean()), dtype=torch.float32))


def auto_gain(inp: GainInputs, **opts) -> ArmGains:
    """[ours] heldout where the arm's group has unselected rollouts, self otherwise."""
    gidx = group_index(inp.group_offsets)
    g = inp.group_offsets.numel() - 1
    n_unsel = torch.zeros(g, dtype=torch.int64).index_add_(0, gidx, (~inp.selected).to(torch.int64))
    held = heldout_gain(inp, **opts)
    own = self_gain(inp)
    use_self = (n_unsel[gidx] == 0)[inp.selected]
    ids = torch.cat([held.arm_ids, own.arm_ids[use_self]])
    gains = torch.cat([held.gains, own.gains[use_self]])
    order = torch.argsort(ids)
    return ArmGains(ids[order], gains[order])


_PER_ARM = {"self": self_gain, "heldout": heldout_gain, "probe": probe_gain, "auto": auto_gain}


def compute_gains(signal: str, inputs: GainInputs, **opts) -> ArmGains:
    """Per-arm gains of one step by the named signal (`batch` is computed by the Scheduler)."""
    if signal not in _PER_ARM:
        fail("compute_gains", "signal", repr(signal),
             f"one of {sorted(_PER_ARM)} ('batch' is computed inside Scheduler.select)")
    return _PER_ARM[signal](inputs.validate(), **opts)


# ------------------------------------------------------------ batch (paper)
def batch_value_entropy(batch: RolloutBatch) -> tuple[float, float]:
    """(V, E): mean verifier reward and mean token entropy (over all tokens) of a fresh batch.

    Without entropies E is 0, so the entropy term of the batch gain vanishes."""
    v = float(batch.reward.double().mean())
    ent = batch.token_entropy
    if ent is None:
        return v, 0.0
    ent = ent.double()
    if batch.mask_nonfinite:
        ent = ent[torch.isfinite(ent)]
    e = float(ent.mean()) if ent.numel() else 0.0
    return v, e


def batch_gain(v_t: float, v_next: float, e_t: float, e_next: float, *, entropy_weight: float,
               entropy_min: float) -> float:
    """[paper] R_t = V_{t+1} - V_t - w_e * 1[E_t > e_min] * (E_{t+1} - E_t)."""
    for name, x in (("v_t", v_t), ("v_next", v_next), ("e_t", e_t), ("e_next", e_next)):
        if not math.isfinite(x):
            fail("batch_gain", name, repr(x), "a finite value")
    guard = 1.0 if e_t > entropy_min else 0.0
    return (v_next - v_t) - entropy_weight * guard * (e_next - e_t)
