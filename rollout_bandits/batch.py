"""The rollout tensor contract shared by every kernel, the scheduler and the trainer.

Token-level data is ragged: one flat stream per quantity plus `offsets` [N+1]
(FlashAttention's cu_seqlens), so groups and rollouts may differ in size and
nothing assumes `view(-1, G)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch

from rollout_bandits.validation import (
    all_finite,
    check_bool,
    check_choice,
    check_int,
    check_tensor,
    describe,
    fail,
    shape_str,
)

_FLOAT_STREAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_INDEX_DTYPES = (torch.int32, torch.int64)
_STREAMS = ("token_logprobs", "token_entropy", "cur_logprobs", "token_ids")
_PER_ROLLOUT = ("reward", "age", "reuse_count", "truncated", "clip_ratio")
_SETTINGS = ("max_response_len", "mask_nonfinite", "allow_empty_rollouts", "nonfinite_reward")
NONFINITE_REWARD = ("error", "zero", "group_min")
_O = "RolloutBatch"


def group_index(group_offsets: torch.Tensor) -> torch.Tensor:
    """Group number 0..G-1 of each rollout, [N] int64, from offsets [G+1] (on their device)."""
    sizes = (group_offsets[1:] - group_offsets[:-1]).to(torch.int64)
    return torch.repeat_interleave(torch.arange(sizes.numel(), device=group_offsets.device), sizes)


def group_offsets_from_ids(group_ids: torch.Tensor) -> torch.Tensor:
    """Offsets [G+1] of the runs of equal ids; each group's rollouts must be adjacent."""
    check_tensor(_O, "group_ids", group_ids, dim=1, kind="int", expected="a 1-D tensor [N]")
    n = group_ids.numel()
    if n == 0:
        return torch.zeros(1, dtype=torch.int64, device=group_ids.device)
    starts = torch.ones(n, dtype=torch.bool, device=group_ids.device)
    starts[1:] = group_ids[1:] != group_ids[:-1]
    run_ids = group_ids[starts]
    if torch.unique(run_ids).numel() != run_ids.numel():
        fail(_O, "group_ids", "a group id that appears in two separate runs",
             "the rollouts of each group adjacent (sort the batch by group first)")
    idx = torch.nonzero(starts).flatten()
    return torch.cat([idx, torch.tensor([n], device=group_ids.device)]).to(torch.int64)


@dataclass
class RolloutBatch:
    """N rollouts in G prompt groups, token streams flattened.

    Required: `token_logprobs` [T] (behaviour policy), `offsets` [N+1], `reward` [N]
    and one of `group_offsets` [G+1] / `group_ids` [N] (both: they must agree). Everything
    else defaults to "fresh, never reused, not truncated". N = 0 is a valid (empty) batch.

    Opt-ins, for data real trainers produce: `mask_nonfinite` (non-finite stream values are
    left out of the statistics instead of an error), `allow_empty_rollouts` (rollouts of 0
    tokens, e.g. fully masked truncated completions; their stream statistics are 0) and
    `nonfinite_reward` ("zero" | "group_min": what a NaN/inf reward counts as wherever the
    scheduler reads rewards, see `finite_reward`; "error" rejects it).
    """

    token_logprobs: torch.Tensor
    offsets: torch.Tensor
    reward: torch.Tensor
    group_offsets: torch.Tensor | None = None
    group_ids: torch.Tensor | None = None
    token_entropy: torch.Tensor | None = None
    cur_logprobs: torch.Tensor | None = None
    age: torch.Tensor | None = None
    reuse_count: torch.Tensor | None = None
    truncated: torch.Tensor | None = None
    clip_ratio: torch.Tensor | None = None
    token_ids: torch.Tensor | None = None
    max_response_len: int | None = None
    mask_nonfinite: bool = False
    allow_empty_rollouts: bool = False
    nonfinite_reward: str = "error"

    def __post_init__(self) -> None:
        if self.group_offsets is None:
            if self.group_ids is None:
                fail(_O, "group_offsets", "neither group_offsets nor group_ids", "one of them")
            self.group_offsets = group_offsets_from_ids(self.group_ids)

    # ------------------------------------------------------------------ sizes
    @property
    def num_rollouts(self) -> int:
        return self.offsets.numel() - 1

    @property
    def num_tokens(self) -> int:
        return self.token_logprobs.numel()

    @property
    def num_groups(self) -> int:
        return self.group_offsets.numel() - 1

    @property
    def device(self) -> torch.device:
        return self.token_logprobs.device

    @property
    def lengths(self) -> torch.Tensor:
        return (self.offsets[1:] - self.offsets[:-1]).to(torch.int64)

    @property
    def group_sizes(self) -> torch.Tensor:
        return (self.group_offsets[1:] - self.group_offsets[:-1]).to(torch.int64)

    def group_index(self) -> torch.Tensor:
        """Group number 0..G-1 of each rollout, [N] int64."""
        return group_index(self.group_offsets.to(self.device))

    def rollout_index(self) -> torch.Tensor:
        """Rollout number of each token, [T] int64."""
        return torch.repeat_interleave(torch.arange(self.num_rollouts, device=self.device), self.lengths)

    def per_rollout(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A per-rollout field with its default (zeros) filled in."""
        value = getattr(self, name)
        if value is None:
            return torch.zeros(self.num_rollouts, dtype=dtype, device=self.device)
        return value.to(dtype)

    def finite_reward(self) -> torch.Tensor:
        """The rewards with every NaN/inf replaced as `nonfinite_reward` says: 0 ("zero") or the
        lowest finite reward of the rollout's group, 0 if it has none ("group_min")."""
        r = self.reward
        bad = ~torch.isfinite(r)
        if self.nonfinite_reward == "error" or not bool(bad.any()):
            return r
        if self.nonfinite_reward == "zero":
            return torch.where(bad, torch.zeros_like(r), r)
        gidx = self.group_index()
        low = torch.full((self.num_groups,), float("inf"), dtype=r.dtype, device=r.device)
        low = low.scatter_reduce(0, gidx, torch.where(bad, float("inf"), r), "amin")
        low = torch.where(torch.isfinite(low), low, torch.zeros_like(low))
        return torch.where(bad, low[gidx], r)

    def with_finite_rewards(self) -> RolloutBatch:
        """This batch with `finite_reward()` as its rewards (itself when they are all finite)."""
        r = self.finite_reward()
        return self if r is self.reward else replace(self, reward=r)

    # -------------------------------------------------------------- validate
    def validate(self, check_values: bool = True) -> RolloutBatch:
        """Raise ValueError naming the field, what was found and what was expected.

        `check_values=False` skips the checks that read whole streams (NaN/inf,
        monotone offsets), for hot paths whose producer is trusted.
        """
        self._check_settings()
        lp = check_tensor(_O, "token_logprobs", self.token_logprobs)
        device = lp.device
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in _SETTINGS:
                continue
            if v is None and f.name not in ("token_logprobs", "offsets", "reward", "group_offsets"):
                continue
            check_tensor(_O, f.name, v)
            if v.device != device:
                fail(_O, f.name, f"device {v.device}", f"device {device} (the device of token_logprobs)")
        check_tensor(_O, "token_logprobs", lp, dim=1, expected="a flat 1-D stream [T]")
        n_tok = lp.numel()
        for name in ("token_logprobs", "token_entropy", "cur_logprobs"):
            check_tensor(_O, name, getattr(self, name), shape=(n_tok,), dtypes=_FLOAT_STREAM_DTYPES,
                         allow_none=True, expected=f"[{n_tok}] (same length as token_logprobs)")
        check_tensor(_O, "token_ids", self.token_ids, shape=(n_tok,), kind="int", allow_none=True)

        n = self._check_offsets(n_tok, check_values)
        rw = check_tensor(_O, "reward", self.reward, shape=(n,), kind="float",
                          expected=f"[{n}] (one per rollout)")
        if check_values and self.nonfinite_reward == "error" and n and not all_finite(rw):
            i = int(torch.nonzero(~torch.isfinite(rw))[0])
            fail(_O, "reward", f"{rw[i].item()} (NaN or inf) at rollout {i}",
                 "finite rewards (or nonfinite_reward='zero' | 'group_min')")
        self._check_groups(n, check_values)
        self._check_per_rollout(n, check_values)
        if check_values and self.max_response_len is not None and n and int(self.lengths.max()) > \
                self.max_response_len:
            fail(_O, "max_response_len", f"{self.max_response_len} but a rollout of {int(self.lengths.max())} "
                 "tokens", "max_response_len >= every rollout's length")
        if check_values and not self.mask_nonfinite:
            for name in ("token_logprobs", "token_entropy", "cur_logprobs"):
                s = getattr(self, name)
                if s is None or s.numel() == 0:
                    continue
                bad = ~torch.isfinite(s)
                if bool(bad.any()):
                    t = int(torch.nonzero(bad)[0])
                    r = int(torch.searchsorted(self.offsets.to(torch.int64), torch.tensor(t, device=device),
                                               right=True)) - 1
                    fail(_O, name, f"{s[t].item()} at token {t} (rollout {r})",
                         "finite values (or mask_nonfinite=True to exclude them)")
        if check_values:
            self._check_magnitudes()
        return self

    def _check_settings(self) -> None:
        check_bool(_O, "mask_nonfinite", self.mask_nonfinite)
        check_bool(_O, "allow_empty_rollouts", self.allow_empty_rollouts)
        check_choice(_O, "nonfinite_reward", self.nonfinite_reward, NONFINITE_REWARD)
        m = self.max_response_len
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            fail(_O, "max_response_len", describe(m), "a positive int or None")

    def _check_offsets(self, n_tok: int, check_values: bool) -> int:
        off = check_tensor(_O, "offsets", self.offsets, dtypes=_INDEX_DTYPES)
        if off.dim() != 1 or off.numel() < 1:
            fail(_O, "offsets", f"shape {shape_str(off)}", "a 1-D tensor [N+1]")
        if check_values:
            if int(off[0]) != 0:
                fail(_O, "offsets", f"offsets[0] == {int(off[0])}", "offsets[0] == 0")
            if int(off[-1]) != n_tok:
                fail(_O, "offsets", f"offsets[-1] == {int(off[-1])}", f"the number of tokens, {n_tok}")
            steps = off[1:] - off[:-1]
            if bool((steps < 0).any()):
                i = int(torch.nonzero(steps < 0)[0])
                fail(_O, "offsets", f"a decrease at rollout {i} ({int(off[i])} -> {int(off[i + 1])})",
                     "monotone non-decreasing offsets")
            if not self.allow_empty_rollouts and bool((steps == 0).any()):
                i = int(torch.nonzero(steps == 0)[0])
                fail(_O, "offsets", f"rollout {i} with 0 tokens",
                     "every rollout to hold at least one token (or allow_empty_rollouts=True)")
        return off.numel() - 1

    def _check_groups(self, n: int, check_values: bool) -> None:
        go = check_tensor(_O, "group_offsets", self.group_offsets, dtypes=_INDEX_DTYPES)
        if go.dim() != 1 or go.numel() < (2 if n else 1):
            fail(_O, "group_offsets", f"shape {shape_str(go)}",
                 "a 1-D tensor [G+1] with G >= 1" if n else "[1] (no groups in an empty batch)")
        if self.group_ids is not None:
            check_tensor(_O, "group_ids", self.group_ids, shape=(n,), kind="int")
        if not check_values:
            return
        if int(go[0]) != 0 or int(go[-1]) != n:
            fail(_O, "group_offsets", f"first {int(go[0])} and last {int(go[-1])}", f"0 and {n}")
        gsteps = go[1:] - go[:-1]
        if bool((gsteps <= 0).any()):
            g = int(torch.nonzero(gsteps <= 0)[0])
            fail(_O, "group_offsets", f"group {g} with {int(gsteps[g])} rollouts",
                 "every group to hold at least one rollout")
        if self.group_ids is not None:
            from_ids = group_offsets_from_ids(self.group_ids)
            if not torch.equal(from_ids.cpu(), go.cpu().to(torch.int64)):
                fail(_O, "group_ids", f"runs that give group offsets {_short(from_ids)}",
                     f"the groups of group_offsets {_short(go)}")

    def _check_per_rollout(self, n: int, check_values: bool) -> None:
        for name in ("age", "reuse_count", "clip_ratio"):
            v = check_tensor(_O, name, getattr(self, name), shape=(n,), allow_none=True,
                             expected=f"[{n}] (one per rollout)")
            if v is None:
                continue
            if v.dtype == torch.bool or v.dtype.is_complex:
                fail(_O, name, f"dtype {v.dtype}", "a numeric dtype")
            if check_values and v.numel():
                vf = v.to(torch.float32)
                if not all_finite(vf) or bool((vf < 0).any()):
                    fail(_O, name, "a negative or non-finite value", "finite values >= 0")
        if self.clip_ratio is not None and check_values and bool((self.clip_ratio > 1).any()):
            fail(_O, "clip_ratio", "a value above 1", "a fraction in [0, 1]")
        check_tensor(_O, "truncated", self.truncated, shape=(n,), kind="bool", allow_none=True,
                     expected=f"[{n}] (one per rollout)")

    def _check_magnitudes(self) -> None:
        """Finite values beyond `validation.MAX_MAGNITUDE` are an error naming this input field:
        the features are float32 and the scorer squares them, so such a value (a -3e38 log-prob,
        a 1e20 reward) would otherwise surface far away, as an inf or NaN score."""
        from rollout_bandits.validation import check_magnitude

        off = self.offsets.to(torch.int64)

        def token(t: int) -> str:
            r = int(torch.searchsorted(off, torch.tensor(t, device=off.device), right=True)) - 1
            return f"at token {t} (rollout {r})"

        for name in ("token_logprobs", "token_entropy", "cur_logprobs"):
            if getattr(self, name) is not None:
                check_magnitude("RolloutBatch", name, getattr(self, name), where=token)
        for name in ("reward", "age", "reuse_count"):
            if getattr(self, name) is not None:
                check_magnitude("RolloutBatch", name, getattr(self, name), where=lambda i: f"at rollout {i}")

    # -------------------------------------------------------- conversions
    @classmethod
    def from_padded(
        cls,
        logprobs: torch.Tensor,
        mask: torch.Tensor,
        reward: torch.Tensor,
        *,
        group_ids: torch.Tensor | None = None,
        group_size: int | None = None,
        entropy: torch.Tensor | None = None,
        cur_logprobs: torch.Tensor | None = None,
        token_ids: torch.Tensor | None = None,
        **per_rollout,
    ) -> RolloutBatch:
        """From the [N, L] tensors + mask that TRL and verl hold (right or left padded).

        Groups: `group_ids` [N] or `group_size` (consecutive rows); both given must agree."""
        check_tensor(_O, "token_logprobs", logprobs, dim=2, expected="[N, L] (padded)")
        check_tensor(_O, "mask", mask, shape=tuple(logprobs.shape),
                     expected=f"{shape_str(logprobs)} (same as logprobs)")
        m = mask.to(torch.bool)
        for name, t in (("token_entropy", entropy), ("cur_logprobs", cur_logprobs), ("token_ids", token_ids)):
            check_tensor(_O, name, t, shape=tuple(logprobs.shape), allow_none=True,
                         expected=f"{shape_str(logprobs)} (padded like logprobs)")
        n = logprobs.shape[0]
        lengths = m.sum(dim=1)
        offsets = torch.zeros(n + 1, dtype=torch.int64, device=logprobs.device)
        offsets[1:] = torch.cumsum(lengths, 0)
        if group_size is not None:
            check_int(_O, "group_size", group_size, 1)
            if n % group_size:
                fail(_O, "group_size", str(group_size), f"a positive divisor of N={n}")
            by_size = torch.arange(n, device=logprobs.device) // group_size
            if group_ids is not None and not torch.equal(group_offsets_from_ids(group_ids).cpu(),
                                                         group_offsets_from_ids(by_size).cpu()):
                fail(_O, "group_ids", "groups other than group_size gives",
                     f"groups of {group_size} consecutive rollouts (or give only one of them)")
            group_ids = by_size if group_ids is None else group_ids
        elif group_ids is None:
            fail(_O, "group_size", "None (and group_ids None)", "group_ids [N] or group_size")
        # Boolean indexing walks row-major, so each row's tokens stay in order.
        return cls(
            token_logprobs=logprobs[m],
            offsets=offsets,
            reward=reward,
            group_ids=group_ids,
            token_entropy=None if entropy is None else entropy[m],
            cur_logprobs=None if cur_logprobs is None else cur_logprobs[m],
            token_ids=None if token_ids is None else token_ids[m],
            **per_rollout,
        )

    def to_padded(self, pad_value: float = 0.0, length: int | None = None) -> dict[str, torch.Tensor]:
        """Right-padded [N, L] streams + bool mask (L = longest rollout unless given)."""
        lengths = self.lengths
        longest = int(lengths.max()) if lengths.numel() else 0
        L = longest if length is None else check_int(_O, "length", length, longest)
        n = self.num_rollouts
        row = self.rollout_index()
        col = torch.arange(self.num_tokens, device=self.device) - self.offsets.to(torch.int64)[row]
        mask = torch.zeros(n, L, dtype=torch.bool, device=self.device)
        mask[row, col] = True
        out = {"mask": mask}
        for name in _STREAMS:
            s = getattr(self, name)
            if s is None:
                continue
            fill = 0 if name == "token_ids" else pad_value
            p = torch.full((n, L), fill, dtype=s.dtype, device=self.device)
            p[row, col] = s
            out[name] = p
        return out

    def to(self, device: torch.device | str) -> RolloutBatch:
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in kw.items():
            if isinstance(v, torch.Tensor):
                kw[k] = v.to(device)
        return RolloutBatch(**kw)

    def take(self, indices: torch.Tensor) -> RolloutBatch:
        """The sub-batch of the given rollouts (sorted indices keep groups adjacent)."""
        idx = indices.to(torch.int64).to(self.device)
        lengths = self.lengths[idx]
        new_off = torch.zeros(idx.numel() + 1, dtype=torch.int64, device=self.device)
        new_off[1:] = torch.cumsum(lengths, 0)
        starts = self.offsets.to(torch.int64)[idx]
        tok = torch.repeat_interleave(starts - new_off[:-1], lengths) + torch.arange(
            int(new_off[-1]), device=self.device
        )
        gid = self.group_ids[idx] if self.group_ids is not None else self.group_index()[idx]
        kw = {}
        for name in _STREAMS:
            s = getattr(self, name)
            kw[name] = None if s is None else s[tok]
        for name in _PER_ROLLOUT:
            s = getattr(self, name)
            kw[name] = None if s is None else s[idx]
        return replace(self, offsets=new_off, group_offsets=None, group_ids=gid, **kw)

    @classmethod
    def concat(cls, parts: Sequence[RolloutBatch]) -> RolloutBatch:
        """The rollouts of several batches, in order, on the first part's device.

        Groups never merge across parts; `group_ids` are kept when every part has them and they
        name distinct groups across parts (else the result has group_offsets only). A
        stream missing from any part is dropped, a per-rollout field missing from a part takes
        its default; parts with 0 rollouts add nothing (all empty: an empty batch).
        `max_response_len` is the largest of those given, at least the longest rollout."""
        if not isinstance(parts, (list, tuple)) or not parts or \
                not all(isinstance(p, RolloutBatch) for p in parts):
            fail(_O, "concat.parts", describe(parts), "a non-empty list of RolloutBatch")
        dev = parts[0].device
        parts = [p.to(dev) for p in ([p for p in parts if p.num_rollouts] or parts[:1])]
        zero = torch.zeros(1, dtype=torch.int64, device=dev)
        offs, goffs, base, gbase = [zero], [zero], 0, 0
        for p in parts:
            offs.append(p.offsets[1:].to(torch.int64) + base)
            goffs.append(p.group_offsets[1:].to(torch.int64) + gbase)
            base += p.num_tokens
            gbase += p.num_rollouts
        kw = {}
        for name in ("token_entropy", "cur_logprobs", "token_ids"):
            vals = [getattr(p, name) for p in parts]
            kw[name] = None if any(v is None for v in vals) else torch.cat(vals)
        for name, dt in (("age", torch.float32), ("reuse_count", torch.float32), ("clip_ratio", torch.float32),
                         ("truncated", torch.bool)):
            kw[name] = torch.cat([p.per_rollout(name, dt) for p in parts])
        lens = [p.max_response_len for p in parts if p.max_response_len is not None]
        offsets = torch.cat(offs)
        longest = int((offsets[1:] - offsets[:-1]).max()) if offsets.numel() > 1 else 0
        group_offsets = torch.cat(goffs)
        return cls(
            token_logprobs=torch.cat([p.token_logprobs.float() for p in parts]),
            offsets=offsets,
            reward=torch.cat([p.reward.float() for p in parts]),
            group_offsets=group_offsets,
            group_ids=_concat_ids([p.group_ids for p in parts], group_offsets),
            max_response_len=max(lens + [longest]) if lens else None,
            mask_nonfinite=any(p.mask_nonfinite for p in parts),
            allow_empty_rollouts=any(p.allow_empty_rollouts for p in parts),
            nonfinite_reward=next((p.nonfinite_reward for p in parts if p.nonfinite_reward != "error"), "error"),
            **kw,
        )


def _concat_ids(ids: list, group_offsets: torch.Tensor) -> torch.Tensor | None:
    """The parts' group ids end to end, if every part has them and they keep the groups apart."""
    if any(i is None for i in ids):
        return None
    cat = torch.cat(ids)
    starts = torch.ones(cat.numel(), dtype=torch.bool, device=cat.device)
    starts[1:] = cat[1:] != cat[:-1]
    runs = cat[starts]
    if torch.unique(runs).numel() != runs.numel() or runs.numel() != group_offsets.numel() - 1:
        return None
    return cat


def _short(t: torch.Tensor) -> str:
    return str(t.tolist()) if t.numel() <= 12 else f"of shape {shape_str(t)}"
