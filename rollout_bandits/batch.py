"""The rollout tensor contract shared by every kernel, the scheduler and the trainer.

Token-level data is ragged: one flat stream per quantity plus `offsets` [N+1]
(FlashAttention's cu_seqlens), so groups and rollouts may differ in size and
nothing assumes `view(-1, G)`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

_FLOAT_STREAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_INDEX_DTYPES = (torch.int32, torch.int64)


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _fail(field: str, found: str, expected: str) -> None:
    raise ValueError(f"RolloutBatch.{field}: found {found}, expected {expected}")


def group_offsets_from_ids(group_ids: torch.Tensor) -> torch.Tensor:
    """Offsets [G+1] of the runs of equal ids; each group's rollouts must be adjacent."""
    if group_ids.dim() != 1:
        _fail("group_ids", f"shape {_shape(group_ids)}", "a 1-D tensor [N]")
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        _fail("group_ids", f"dtype {group_ids.dtype}", "an integer dtype")
    n = group_ids.numel()
    if n == 0:
        return torch.zeros(1, dtype=torch.int64, device=group_ids.device)
    starts = torch.ones(n, dtype=torch.bool, device=group_ids.device)
    starts[1:] = group_ids[1:] != group_ids[:-1]
    run_ids = group_ids[starts]
    if torch.unique(run_ids).numel() != run_ids.numel():
        _fail(
            "group_ids",
            "a group id that appears in two separate runs",
            "the rollouts of each group adjacent (sort the batch by group first)",
        )
    idx = torch.nonzero(starts).flatten()
    return torch.cat([idx, torch.tensor([n], device=group_ids.device)]).to(torch.int64)


@dataclass
class RolloutBatch:
    """N rollouts in G prompt groups, token streams flattened.

    Required: `token_logprobs` [T] (behaviour policy), `offsets` [N+1], `reward` [N]
    and one of `group_offsets` [G+1] / `group_ids` [N]. Everything else defaults
    to "fresh, never reused, not truncated".
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
    # Opt-in: non-finite stream values are excluded from the statistics instead of an error.
    mask_nonfinite: bool = False

    def __post_init__(self) -> None:
        if self.group_offsets is None:
            if self.group_ids is None:
                raise ValueError(
                    "RolloutBatch: found neither group_offsets nor group_ids, expected one of them"
                )
            if not isinstance(self.group_ids, torch.Tensor):
                _fail("group_ids", type(self.group_ids).__name__, "a torch.Tensor")
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
        return torch.repeat_interleave(
            torch.arange(self.num_groups, device=self.device), self.group_sizes
        )

    def rollout_index(self) -> torch.Tensor:
        """Rollout number of each token, [T] int64."""
        return torch.repeat_interleave(torch.arange(self.num_rollouts, device=self.device), self.lengths)

    def per_rollout(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A per-rollout field with its default (zeros) filled in."""
        value = getattr(self, name)
        if value is None:
            return torch.zeros(self.num_rollouts, dtype=dtype, device=self.device)
        return value.to(dtype)

    # -------------------------------------------------------------- validate
    def validate(self, check_values: bool = True) -> RolloutBatch:
        """Raise ValueError naming the field, what was found and what was expected.

        `check_values=False` skips the checks that read whole streams (NaN/inf,
        monotone offsets), for hot paths whose producer is trusted.
        """
        lp = self.token_logprobs
        if not isinstance(lp, torch.Tensor):
            _fail("token_logprobs", type(lp).__name__, "a torch.Tensor")
        device = lp.device
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor) and v.device != device:
                _fail(f.name, f"device {v.device}", f"device {device} (the device of token_logprobs)")
            if f.name in ("max_response_len", "mask_nonfinite"):
                continue
            if v is not None and not isinstance(v, torch.Tensor):
                _fail(f.name, type(v).__name__, "a torch.Tensor or None")
        if lp.dim() != 1:
            _fail("token_logprobs", f"shape {_shape(lp)}", "a flat 1-D stream [T]")
        n_tok = lp.numel()
        for name in ("token_logprobs", "token_entropy", "cur_logprobs"):
            s = getattr(self, name)
            if s is None:
                continue
            if s.dtype not in _FLOAT_STREAM_DTYPES:
                _fail(name, f"dtype {s.dtype}", "float32, bfloat16 or float16")
            if s.shape != (n_tok,):
                _fail(name, f"shape {_shape(s)}", f"[{n_tok}] (same length as token_logprobs)")
        if self.token_ids is not None:
            if self.token_ids.shape != (n_tok,):
                _fail("token_ids", f"shape {_shape(self.token_ids)}", f"[{n_tok}]")
            if self.token_ids.dtype.is_floating_point:
                _fail("token_ids", f"dtype {self.token_ids.dtype}", "an integer dtype")

        off = self.offsets
        if off.dtype not in _INDEX_DTYPES:
            _fail("offsets", f"dtype {off.dtype}", "int32 or int64")
        if off.dim() != 1 or off.numel() < 1:
            _fail("offsets", f"shape {_shape(off)}", "a 1-D tensor [N+1]")
        n = off.numel() - 1
        if n == 0:
            _fail("offsets", "an empty batch (0 rollouts)", "at least one rollout")
        if check_values:
            if int(off[0]) != 0:
                _fail("offsets", f"offsets[0] == {int(off[0])}", "offsets[0] == 0")
            if int(off[-1]) != n_tok:
                _fail("offsets", f"offsets[-1] == {int(off[-1])}", f"the number of tokens, {n_tok}")
            steps = off[1:] - off[:-1]
            if bool((steps < 0).any()):
                i = int(torch.nonzero(steps < 0)[0])
                _fail("offsets", f"a decrease at rollout {i} ({int(off[i])} -> {int(off[i + 1])})",
                      "monotone non-decreasing offsets")
            if bool((steps == 0).any()):
                i = int(torch.nonzero(steps == 0)[0])
                _fail("offsets", f"rollout {i} with 0 tokens", "every rollout to hold at least one token")

        rw = self.reward
        if rw.shape != (n,):
            _fail("reward", f"shape {_shape(rw)}", f"[{n}] (one per rollout)")
        if not rw.dtype.is_floating_point:
            _fail("reward", f"dtype {rw.dtype}", "a floating dtype")
        if check_values and not bool(torch.isfinite(rw).all()):
            _fail("reward", "NaN or inf", "finite rewards")

        go = self.group_offsets
        if go.dtype not in _INDEX_DTYPES:
            _fail("group_offsets", f"dtype {go.dtype}", "int32 or int64")
        if go.dim() != 1 or go.numel() < 2:
            _fail("group_offsets", f"shape {_shape(go)}", "a 1-D tensor [G+1] with G >= 1")
        if check_values:
            if int(go[0]) != 0 or int(go[-1]) != n:
                _fail("group_offsets", f"first {int(go[0])} and last {int(go[-1])}", f"0 and {n}")
            gsteps = go[1:] - go[:-1]
            if bool((gsteps <= 0).any()):
                g = int(torch.nonzero(gsteps <= 0)[0])
                _fail("group_offsets", f"group {g} with {int(gsteps[g])} rollouts",
                      "every group to hold at least one rollout")
        if self.group_ids is not None and self.group_ids.shape != (n,):
            _fail("group_ids", f"shape {_shape(self.group_ids)}", f"[{n}]")

        for name in ("age", "reuse_count", "clip_ratio"):
            v = getattr(self, name)
            if v is None:
                continue
            if v.shape != (n,):
                _fail(name, f"shape {_shape(v)}", f"[{n}] (one per rollout)")
            if v.dtype == torch.bool:
                _fail(name, "dtype torch.bool", "a numeric dtype")
            if check_values and v.numel():
                vf = v.to(torch.float32)
                if not bool(torch.isfinite(vf).all()) or bool((vf < 0).any()):
                    _fail(name, "a negative or non-finite value", "finite values >= 0")
        if self.clip_ratio is not None and check_values and bool((self.clip_ratio > 1).any()):
            _fail("clip_ratio", "a value above 1", "a fraction in [0, 1]")
        if self.truncated is not None:
            t = self.truncated
            if t.shape != (n,):
                _fail("truncated", f"shape {_shape(t)}", f"[{n}] (one per rollout)")
            if t.dtype != torch.bool:
                _fail("truncated", f"dtype {t.dtype}", "torch.bool")
        if self.max_response_len is not None:
            m = self.max_response_len
            if not isinstance(m, int) or m < 1:
                _fail("max_response_len", repr(m), "a positive int or None")
            if check_values and int(self.lengths.max()) > m:
                _fail("max_response_len", f"{m} but a rollout of {int(self.lengths.max())} tokens",
                      "max_response_len >= every rollout's length")

        if check_values and not self.mask_nonfinite:
            for name in ("token_logprobs", "token_entropy", "cur_logprobs"):
                s = getattr(self, name)
                if s is None or s.numel() == 0:
                    continue
                bad = ~torch.isfinite(s)
                if bool(bad.any()):
                    t = int(torch.nonzero(bad)[0])
                    r = int(torch.searchsorted(off.to(torch.int64), torch.tensor(t, device=device),
                                               right=True)) - 1
                    _fail(name, f"{s[t].item()} at token {t} (rollout {r})",
                          "finite values (or mask_nonfinite=True to exclude them)")
        if check_values:
            self._check_magnitudes()
        return self

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
        """From the [N, L] tensors + mask that TRL and verl hold (right or left padded)."""
        if logprobs.dim() != 2:
            _fail("token_logprobs", f"padded shape {_shape(logprobs)}", "[N, L]")
        if mask.shape != logprobs.shape:
            _fail("mask", f"shape {_shape(mask)}", f"{_shape(logprobs)} (same as logprobs)")
        m = mask.to(torch.bool)
        for name, t in (("token_entropy", entropy), ("cur_logprobs", cur_logprobs), ("token_ids", token_ids)):
            if t is not None and t.shape != logprobs.shape:
                _fail(name, f"padded shape {_shape(t)}", f"{_shape(logprobs)}")
        lengths = m.sum(dim=1)
        offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=logprobs.device)
        offsets[1:] = torch.cumsum(lengths, 0)
        if group_ids is None:
            if group_size is None:
                raise ValueError("RolloutBatch.from_padded: give group_ids [N] or group_size")
            n = logprobs.shape[0]
            if group_size < 1 or n % group_size:
                _fail("group_size", str(group_size), f"a positive divisor of N={n}")
            group_ids = torch.arange(n, device=logprobs.device) // group_size
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
        L = int(lengths.max()) if length is None else length
        if L < int(lengths.max()):
            _fail("length", str(L), f">= the longest rollout ({int(lengths.max())})")
        n = self.num_rollouts
        row = self.rollout_index()
        col = torch.arange(self.num_tokens, device=self.device) - self.offsets.to(torch.int64)[row]
        mask = torch.zeros(n, L, dtype=torch.bool, device=self.device)
        mask[row, col] = True
        out = {"mask": mask}
        for name in ("token_logprobs", "token_entropy", "cur_logprobs", "token_ids"):
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
        for name in ("token_logprobs", "token_entropy", "cur_logprobs", "token_ids"):
            s = getattr(self, name)
            kw[name] = None if s is None else s[tok]
        for name in ("reward", "age", "reuse_count", "truncated", "clip_ratio"):
            s = getattr(self, name)
            kw[name] = None if s is None else s[idx]
        return replace(self, offsets=new_off, group_offsets=None, group_ids=gid, **kw)
