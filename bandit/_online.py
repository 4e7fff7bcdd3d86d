"""What the explorers share: context/gain checks, running moments, a bounded replay, the config
fields, `Explorer` (standardization, the observe protocol, the state code; the base of LinUCB)
and `OnlineLearner` (its MLP, trained in proportion to the data; the base of NeuralUCB,
neural-linear and EE-Net)."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from rollout_bandits.kernels.rollout_features import NUM_FEATURES
from rollout_bandits.validation import (  # noqa: F401  (re-exported for the learners)
    all_finite,
    check_bool,
    check_choice,
    check_field_types,
    check_float,
    check_int,
    fail,
    shape_str,
)

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def check_contexts(owner: str, x, feature_dim: int) -> torch.Tensor:
    """Contexts must be finite [N, D] with the learner's D; a mismatch means the wrong feature set."""
    if not isinstance(x, torch.Tensor):
        fail(owner, "contexts", type(x).__name__, f"a torch.Tensor [N, {feature_dim}]")
    if x.dim() != 2 or x.shape[1] != feature_dim:
        fail(owner, "contexts", f"shape {shape_str(x)}", f"[N, {feature_dim}] (the learner's feature width)")
    if not x.dtype.is_floating_point:
        fail(owner, "contexts", f"dtype {x.dtype}", "a floating dtype")
    if x.numel() and not all_finite(x):
        row = int(torch.nonzero(~torch.isfinite(x))[0, 0])
        fail(owner, "contexts", f"NaN or inf in row {row}", "finite contexts")
    return x


def check_gains(owner: str, gains, n: int) -> torch.Tensor:
    if not isinstance(gains, torch.Tensor):
        gains = torch.as_tensor(gains, dtype=torch.float32)
    if gains.dim() != 1 or gains.numel() != n:
        fail(owner, "gains", f"shape {shape_str(gains)}", f"[{n}] (one per arm)")
    if not gains.dtype.is_floating_point:
        fail(owner, "gains", f"dtype {gains.dtype}", "a floating dtype")
    if n and not all_finite(gains):
        i = int(torch.nonzero(~torch.isfinite(gains))[0])
        fail(owner, "gains", f"{gains[i].item()} at position {i}", "finite gains")
    return gains


class RunningMoments:
    """Per-column mean and variance over every row ever seen (Chan's parallel update, float64)."""

    def __init__(self, width: int):
        self.count = 0.0
        self.mean = torch.zeros(width, dtype=torch.float64)
        self.m2 = torch.zeros(width, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to("cpu", torch.float64).reshape(-1, self.mean.numel())
        n = x.shape[0]
        if n == 0:
            return
        bm = x.mean(0)
        bm2 = ((x - bm) ** 2).sum(0)
        tot = self.count + n
        delta = bm - self.mean
        self.mean = self.mean + delta * (n / tot)
        self.m2 = self.m2 + bm2 + delta**2 * (self.count * n / tot)
        self.count = tot

    def std(self, floor: float) -> torch.Tensor:
        if self.count < 2:
            return torch.ones_like(self.mean)
        return (self.m2 / self.count).sqrt().clamp_min(floor)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean.clone(), "m2": self.m2.clone()}

    def load_state_dict(self, s: dict) -> None:
        self.count = float(s["count"])
        self.mean = s["mean"].to(torch.float64).clone()
        self.m2 = s["m2"].to(torch.float64).clone()


class Replay:
    """Ring buffer of the most recent (context, gain, extra columns) pairs: bounded memory."""

    def __init__(self, capacity: int, width: int, extra: dict[str, int] | None = None):
        self.capacity = capacity
        self.x = torch.zeros(capacity, width)
        self.y = torch.zeros(capacity)
        self.extra = {k: torch.zeros(capacity, w) for k, w in (extra or {}).items()}
        self.size = 0
        self.pos = 0

    def add(self, x: torch.Tensor, y: torch.Tensor, **extra: torch.Tensor) -> None:
        n = x.shape[0]
        if n > self.capacity:  # only the newest fit
            x, y = x[-self.capacity:], y[-self.capacity:]
            extra = {k: v[-self.capacity:] for k, v in extra.items()}
            n = self.capacity
        idx = (self.pos + torch.arange(n)) % self.capacity
        self.x.index_copy_(0, idx, x.detach().to("cpu", torch.float32))
        self.y.index_copy_(0, idx, y.detach().to("cpu", torch.float32))
        for k, v in extra.items():
            self.extra[k].index_copy_(0, idx, v.detach().to("cpu", torch.float32).reshape(n, -1))
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def oldest(self, n: int) -> torch.Tensor:
        """The slots of the n least recently added pairs (n <= size): what an add overwrites."""
        return (self.pos - self.size + torch.arange(n)) % self.capacity

    def newest(self, n: int) -> torch.Tensor:
        """The slots of the n most recently added pairs (n <= size)."""
        return (self.pos - n + torch.arange(n)) % self.capacity

    def state_dict(self) -> dict:
        return {"x": self.x[: self.size].clone(), "y": self.y[: self.size].clone(),
                "extra": {k: v[: self.size].clone() for k, v in self.extra.items()},
                "size": self.size, "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        n = int(s["size"])
        if n > self.capacity:
            fail("Replay", "state['size']", f"{n} stored pairs", f"at most the capacity {self.capacity}")
        self.x.zero_()
        self.y.zero_()
        self.x[:n] = s["x"]
        self.y[:n] = s["y"]
        for k, v in self.extra.items():
            v.zero_()
            v[:n] = s["extra"][k]
        self.size, self.pos = n, int(s["pos"])


@dataclass
class ExplorerConfig:
    """The fields every explorer has: the context width and the floor of the context scale
    (contexts are standardized by running moments, each column's std at least `feature_std_floor`)."""

    feature_dim: int = NUM_FEATURES
    feature_std_floor: float = 1e-3

    def __post_init__(self) -> None:
        check_field_types(self)
        o = type(self).__name__
        check_int(o, "feature_dim", self.feature_dim, 1)
        check_float(o, "feature_std_floor", self.feature_std_floor, 0.0, lo_open=True)


@dataclass
class LearnerConfig(ExplorerConfig):
    """The fields of the MLP learners (NeuralUCB, neural-linear, EE-Net).

    The MLP (feature_dim -> hidden -> hidden -> 1, `activation`) regresses standardized gains on
    standardized contexts. Training is proportional to the data: an `observe` of n pairs runs
    Adam steps (lr, L2 `weight_decay`) until each new pair was used `train_passes` times; a step
    holds c new pairs and round(replay_ratio * c) pairs drawn from the `replay_capacity` most
    recent ones, at most `train_batch` rows. Every pair is thus used about
    train_passes * (1 + replay_ratio) times whether it came in an observe of 4 or of 2,048
    pairs. `seed` seeds initialization and sampling.
    The defaults were chosen on the regret benchmark's tuning environments (benchmarks/
    regret_tune.py); train_batch bounds the number of steps an observe of 2,048 pairs takes.
    """

    hidden: int = 32
    activation: str = "relu"
    lr: float = 3e-3
    weight_decay: float = 1e-2
    train_passes: float = 2.0
    train_batch: int = 512
    replay_ratio: float = 1.0
    replay_capacity: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        o = type(self).__name__
        check_int(o, "hidden", self.hidden, 1)
        check_choice(o, "activation", self.activation, tuple(ACTIVATIONS))
        check_float(o, "lr", self.lr, 0.0, lo_open=True)
        check_float(o, "weight_decay", self.weight_decay, 0.0)
        check_float(o, "train_passes", self.train_passes, 0.0, 64.0)
        check_int(o, "train_batch", self.train_batch, 1)
        check_float(o, "replay_ratio", self.replay_ratio, 0.0, 64.0)
        check_int(o, "replay_capacity", self.replay_capacity, 1)
        check_int(o, "seed", self.seed, 0)


class MLP(torch.nn.Module):
    """D -> H -> H -> 1 in the kernel's row-vector layout (w1 [D, H], ..., w3 [H], b3 0-d)."""

    def __init__(self, d: int, h: int, activation: str, generator: torch.Generator):
        super().__init__()

        def uniform(*shape: int, fan_in: int) -> torch.nn.Parameter:
            bound = 1.0 / math.sqrt(fan_in)
            return torch.nn.Parameter((torch.rand(*shape, generator=generator) * 2 - 1) * bound)

        # He-uniform for ReLU layers keeps phi's scale O(1) at init.
        self.w1 = torch.nn.Parameter(uniform(d, h, fan_in=d).data * math.sqrt(6.0))
        self.b1 = uniform(h, fan_in=d)
        self.w2 = torch.nn.Parameter(uniform(h, h, fan_in=h).data * math.sqrt(6.0))
        self.b2 = uniform(h, fan_in=h)
        self.w3 = uniform(h, fan_in=h)
        self.b3 = torch.nn.Parameter(torch.zeros(()))
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        self._work: dict[int, tuple[torch.Tensor, ...]] = {}  # mse_gradients' buffers, per batch size

    def hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        z1 = x @ self.w1 + self.b1
        h1 = self.act(z1)
        z2 = h1 @ self.w2 + self.b2
        return z1, h1, z2, self.act(z2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(x)[3] @ self.w3 + self.b3

    def hidden_bound(self, max_abs_x: float) -> float:
        """An upper bound on |z1|, |h1|, |z2| and |phi| for inputs with |x| <= max_abs_x (each
        layer: max_j sum_i |W_ij| times the bound before, plus max |b|; |relu(z)|, |gelu(z)| <=
        |z|), in float64: when it is far below float32's range no feature can overflow, and the
        forward pass that would check it can be skipped."""
        with torch.no_grad():
            bound = max_abs_x
            for w, b in ((self.w1, self.b1), (self.w2, self.b2)):
                bound = bound * float(w.double().abs().sum(0).max()) + float(b.double().abs().max())
        return bound

    def mse_gradients(self, x: torch.Tensor, y: torch.Tensor,
                      out: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.Tensor, ...]:
        """d mean((f(x) - y)^2) / d (w1, b1, w2, b2, w3, b3), written out: a training step's
        cost is a handful of matmuls, without autograd's per-step overhead (which dominated).
        `out` (tensors shaped like the parameters, e.g. `FlatAdam.grads`) receives them in place.
        The intermediates live in buffers kept per batch size (a step allocates nothing: the
        allocations cost a fifth of a step at these sizes)."""
        b = x.shape[0]
        if out is None:
            out = tuple(torch.empty_like(p) for p in (self.w1, self.b1, self.w2, self.b2, self.w3, self.b3))
        work = self._work.get(b)
        if work is None:
            h = self.w2.shape[0]
            work = self._work[b] = (*(torch.empty(b, h) for _ in range(6)), torch.empty(b))
        z1, h1, z2, phi, d, t, e = work
        g_w1, g_b1, g_w2, g_b2, g_w3, g_b3 = out
        with torch.no_grad():
            torch.addmm(self.b1, x, self.w1, out=z1)
            act_forward(z1, h1, self.activation)
            torch.addmm(self.b2, h1, self.w2, out=z2)
            act_forward(z2, phi, self.activation)
            # dL/df = (2 / B) (f - y), f = phi w3 + b3
            torch.addmv(y, phi, self.w3, beta=-2.0 / b, alpha=2.0 / b, out=e).add_(self.b3, alpha=2.0 / b)
            torch.outer(e, self.w3, out=t)
            act_backward(t, z2, self.activation, out=d)  # dL/dz2 [B, H]
            torch.mm(h1.T, d, out=g_w2)
            torch.sum(d, 0, out=g_b2)
            torch.mm(d, self.w2.T, out=t)
            act_backward(t, z1, self.activation, out=d)  # dL/dz1 [B, H]
            torch.mm(x.T, d, out=g_w1)
            torch.sum(d, 0, out=g_b1)
            torch.mv(phi.T, e, out=g_w3)
            torch.sum(e, 0, out=g_b3)
        return out


def act_forward(z: torch.Tensor, out: torch.Tensor, activation: str) -> torch.Tensor:
    """The activation of z into `out`."""
    if activation == "relu":
        return torch.clamp_min(z, 0.0, out=out)
    return torch.ops.aten.gelu.out(z, out=out)


def act_backward(grad: torch.Tensor, z: torch.Tensor, activation: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """grad * the activation's derivative at z, with autograd's fused backward kernels (a
    multiply by a boolean mask costs several times more at these sizes), into `out` if given."""
    if activation == "relu":
        if out is None:
            return torch.ops.aten.threshold_backward(grad, z, 0)
        return torch.ops.aten.threshold_backward.grad_input(grad, z, 0, grad_input=out)
    if out is None:
        return torch.ops.aten.gelu_backward(grad, z)
    return torch.ops.aten.gelu_backward.grad_input(grad, z, grad_input=out)


class FlatAdam:
    """Adam with L2 weight decay (torch.optim.Adam(fused=True)'s update, its fused kernel) over a
    module's parameters, which it moves into one flat buffer (they stay the module's parameters,
    as views): a step is one kernel over one tensor. At the learners' sizes torch.optim's
    per-step bookkeeping, or Adam as seven vector ops, cost about as much as the gradient."""

    def __init__(self, module: torch.nn.Module, lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        params = list(module.parameters())
        self.flat = torch.cat([p.detach().reshape(-1) for p in params])
        self.grad = torch.zeros_like(self.flat)
        views, off = [], 0
        for p in params:
            p.data = self.flat[off:off + p.numel()].view_as(p)
            views.append(self.grad[off:off + p.numel()].view_as(p))
            off += p.numel()
        self.grads = tuple(views)  # where a step's gradients go (the parameters' shapes)
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self._step = torch.zeros((), dtype=torch.float32)  # the fused kernel's step count
        self._one = torch.ones((), dtype=torch.float32)  # (adding a tensor: a Python 1.0 costs 3x more)

    @property
    def steps(self) -> int:
        return int(self._step)

    def step(self, grads=None) -> None:
        """One update from the gradients of the module's parameters, in parameters() order;
        None (or `self.grads`): they were written into `self.grads`."""
        if grads is not None and grads is not self.grads:
            torch.cat([t.reshape(-1) for t in grads], out=self.grad)
        self._step.add_(self._one)
        torch._fused_adam_([self.flat], [self.grad], [self.exp_avg], [self.exp_avg_sq], [], [self._step],
                           lr=self.lr, beta1=self.betas[0], beta2=self.betas[1],
                           weight_decay=self.weight_decay, eps=self.eps, amsgrad=False, maximize=False)

    def state_dict(self) -> dict:
        return {"step": self.steps, "exp_avg": self.exp_avg.clone(), "exp_avg_sq": self.exp_avg_sq.clone()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or not {"step", "exp_avg", "exp_avg_sq"} <= set(state):
            fail("FlatAdam", "state", f"keys {sorted(state) if isinstance(state, dict) else type(state).__name__}",
                 "{step, exp_avg, exp_avg_sq} (a learner state saved before FlatAdam cannot be resumed)")
        for k in ("exp_avg", "exp_avg_sq"):
            if tuple(state[k].shape) != tuple(self.flat.shape):
                fail("FlatAdam", f"state[{k!r}]", f"shape {shape_str(state[k])}", f"[{self.flat.numel()}]")
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        self._step.fill_(int(state["step"]))


class Explorer:
    """What every explorer shares: checks, running standardization of contexts and gains, the
    observe protocol and the state code.

    The scorer interface the Scheduler uses: `score`, `export_weights` (None: score with
    `score`), `observe`, `update_feature_stats`, `standardize`, `state_dict` /
    `load_state_dict`. Subclasses give `name`, `_score`, `_prepare` (everything an observation
    needs that can fail, before any state changes) and `_learn`, and list their extra state in
    `_modules` / `_optimizers` / `_tensors`.
    """

    name = ""

    def __init__(self, config: ExplorerConfig):
        self.config = config
        self.feature_stats = RunningMoments(config.feature_dim)
        self.label_stats = RunningMoments(1)
        self.num_observed = 0
        self._version = 0  # bumped whenever the scores could change

    @property
    def owner(self) -> str:
        return type(self).__name__

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    # ------------------------------------------------------------ standardization
    def _label_scale(self) -> tuple[float, float]:
        s = self.label_stats
        if s.count < 2 or float(s.m2[0]) <= 0.0:
            return (float(s.mean[0]) if s.count else 0.0), 1.0
        return float(s.mean[0]), math.sqrt(float(s.m2[0]) / s.count)

    def _feature_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.feature_stats.mean, self.feature_stats.std(self.config.feature_std_floor)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        mu, sd = self._feature_scale()
        return ((x.detach().to("cpu", torch.float64) - mu) / sd).to(torch.float32)

    def update_feature_stats(self, x: torch.Tensor) -> None:
        """Contexts seen at selection time (all candidates, not only pulled arms) set the scale;
        the Scheduler calls this before it scores them, so no score reads raw contexts."""
        check_contexts(self.owner, x, self.feature_dim)
        self.feature_stats.update(x)
        self._version += 1

    # ------------------------------------------------------------------ scoring
    def export_weights(self, device: torch.device | str = "cpu"):
        return None

    def score(self, x: torch.Tensor, *, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(score, mean, bonus) [N] in raw gain units."""
        check_contexts(self.owner, x, self.feature_dim)
        if x.shape[0] == 0:
            e = torch.zeros(0, device=x.device)
            return e, e, e
        return self._score(x, backend)

    def _score(self, x: torch.Tensor, backend: str):
        raise NotImplementedError

    # ----------------------------------------------------------------- learning
    def validate_observation(self, x: torch.Tensor, gains) -> tuple[torch.Tensor, torch.Tensor]:
        check_contexts(self.owner, x, self.feature_dim)
        return x, check_gains(self.owner, gains, x.shape[0])

    def observe(self, x: torch.Tensor, gains) -> None:
        """Learn from pulled arms' (context, gain) pairs. Everything that can fail is checked
        before any state changes, so a ValueError leaves the learner as it was. A learner that
        observes before any `update_feature_stats` takes its context scale from these contexts."""
        x, gains = self.validate_observation(x, gains)
        if x.shape[0] == 0:
            return
        x = x.detach().to("cpu", torch.float32)
        gains = gains.detach().to("cpu", torch.float32)
        seeded = self.feature_stats.count == 0
        if seeded:
            self.feature_stats.update(x)
        try:
            prepared = self._prepare(x)
        except ValueError:
            if seeded:
                self.feature_stats = RunningMoments(self.feature_dim)
            raise
        self.label_stats.update(gains[:, None])
        self._learn(x, gains, prepared)
        self.num_observed += x.shape[0]
        self._version += 1

    def _prepare(self, x: torch.Tensor):
        raise NotImplementedError

    def _learn(self, x: torch.Tensor, gains: torch.Tensor, prepared) -> None:
        raise NotImplementedError

    def _check_finite(self, value: torch.Tensor, what: str) -> None:
        if not all_finite(value):
            row = int(torch.nonzero(~torch.isfinite(value.reshape(value.shape[0], -1)))[0, 0])
            fail(self.owner, "contexts", f"row {row}, whose {what} overflows after standardization",
                 "contexts within the range of those seen so far by a factor float32 can hold")

    # -------------------------------------------------------------- checkpoints
    def __deepcopy__(self, memo: dict):
        """A learner rebuilt from its state: a plain deepcopy would give the copied MLP's
        parameters and its optimizer's flat buffer separate storages (no longer views of it)."""
        new = type(self)(copy.deepcopy(self.config, memo))
        new.load_state_dict(self.state_dict())
        return new

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {}

    def _optimizers(self) -> dict[str, FlatAdam]:
        return {}

    def _tensors(self) -> tuple[str, ...]:
        """Names of extra float64 tensor attributes that are part of the state."""
        return ()

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        """Plain tensors, numbers and dicts (loads with torch.load(weights_only=True)), all copies."""
        out = {
            "kind": self.name,
            "config": asdict(self.config),
            "feature_stats": self.feature_stats.state_dict(),
            "label_stats": self.label_stats.state_dict(),
            "num_observed": self.num_observed,
            **self._extra_state(),
        }
        for k, m in self._modules().items():
            out[k] = {n: v.detach().clone() for n, v in m.state_dict().items()}
        for k, o in self._optimizers().items():
            out[k] = o.state_dict()
        for k in self._tensors():
            out[k] = getattr(self, k).clone()
        return out

    def load_state_dict(self, state: dict) -> None:
        o = self.owner
        if state.get("kind") != self.name:
            fail(o, "state['kind']", repr(state.get("kind")), repr(self.name))
        if type(self.config)(**state["config"]) != self.config:
            fail(o, "state['config']", repr(state["config"]), f"this learner's config {asdict(self.config)}")
        for k, m in self._modules().items():
            m.load_state_dict(state[k])
        for k, opt in self._optimizers().items():
            opt.load_state_dict(state[k])
        for k in self._tensors():
            setattr(self, k, state[k].to(torch.float64).clone())
        self.feature_stats.load_state_dict(state["feature_stats"])
        self.label_stats.load_state_dict(state["label_stats"])
        self.num_observed = int(state["num_observed"])
        self._load_extra_state(state)
        self._version += 1


class OnlineLearner(Explorer):
    """An MLP gain regressor trained online on a bounded replay, plus an exploration term
    (NeuralUCB, neural-linear and EE-Net). Subclasses may add per-row replay columns
    (`_replay_extra`) and steps on the same rows as the MLP's (`_train_extra`)."""

    def __init__(self, config: LearnerConfig):
        super().__init__(config)
        cfg = config
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.mlp = MLP(cfg.feature_dim, cfg.hidden, cfg.activation, self.generator)
        self.optimizer = FlatAdam(self.mlp, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.replay = Replay(cfg.replay_capacity, cfg.feature_dim, extra=self._replay_extra())

    def _replay_extra(self) -> dict[str, int]:
        return {}

    def _train(self, n_new: int) -> None:
        """Adam steps until each of the `n_new` newest replay pairs the MLP may train on was used
        `train_passes` times (in a shuffled order), each step on c of them plus
        round(replay_ratio * c) pairs drawn from the trainable replay (c + those <=
        train_batch): the updates grow with the data, not with the number of `observe` calls.
        Then `_train_extra` on the same steps' rows. Every step's rows are drawn and
        standardized first, in one pass (the steps themselves are the only sequential part)."""
        cfg, r = self.config, self.replay
        fresh_pool = r.newest(min(n_new, r.size))
        trainable = self._trainable()
        pool = None  # the slots replay rows are drawn from (None: all of [0, size))
        if trainable is not None:
            fresh_pool = fresh_pool[trainable.index_select(0, fresh_pool)]
            pool = torch.nonzero(trainable[: r.size]).squeeze(1)
        n_fresh = fresh_pool.numel()
        total = math.ceil(cfg.train_passes * n_fresh - 1e-9)
        if total <= 0:
            return
        per_step = max(1, min(n_fresh, int(cfg.train_batch / (1.0 + cfg.replay_ratio))))
        n_pool = r.size if pool is None else pool.numel()
        fresh_sizes = [min(per_step, total - s) for s in range(0, total, per_step)]
        replay_sizes = [min(round(cfg.replay_ratio * c), n_pool) for c in fresh_sizes]
        order = torch.cat([torch.randperm(n_fresh, generator=self.generator)
                           for _ in range(math.ceil(total / n_fresh))])[:total]
        drawn = torch.randint(n_pool, (sum(replay_sizes),), generator=self.generator)
        fresh = fresh_pool.index_select(0, order).split(fresh_sizes)
        replayed = (drawn if pool is None else pool.index_select(0, drawn)).split(replay_sizes)
        idx_all = torch.cat([t for pair in zip(fresh, replayed, strict=True) for t in pair])
        counts = [a + b for a, b in zip(fresh_sizes, replay_sizes, strict=True)]
        ly, sy = self._label_scale()
        # Elementwise, so standardizing the replay once is the same as each gathered row when
        # the steps gather more rows than it holds.
        if idx_all.numel() > r.size:
            xs_all = self.standardize(r.x[: r.size]).index_select(0, idx_all)
        else:
            xs_all = self.standardize(r.x.index_select(0, idx_all))  # (5x faster than x[idx])
        ys_all = (r.y.index_select(0, idx_all) - ly) / sy
        grads = self.optimizer.grads
        for xs, ys in zip(xs_all.split(counts), ys_all.split(counts), strict=True):
            self.optimizer.step(self.mlp.mse_gradients(xs, ys, out=grads))
        self._train_extra(idx_all, counts)

    def _trainable(self) -> torch.Tensor | None:
        """Which replay slots the MLP may train on, a bool per slot (None: all; neural-linear
        holds some out to choose its head)."""
        return None

    def _train_extra(self, idx: torch.Tensor, counts: list[int]) -> None:
        """Steps of another model on the MLP's rows: replay slots idx, split by counts into
        steps (EE-Net's f2, which does not read the MLP, so it may run after all of them)."""

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"mlp": self.mlp}

    def _optimizers(self) -> dict[str, FlatAdam]:
        return {"optimizer": self.optimizer}

    def _extra_state(self) -> dict:
        return {"replay": self.replay.state_dict(), "generator": self.generator.get_state()}

    def _load_extra_state(self, state: dict) -> None:
        self.replay.load_state_dict(state["replay"])
        self.generator.set_state(state["generator"])
