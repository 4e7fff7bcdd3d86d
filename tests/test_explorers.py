"""Issue 16: training in proportion to the data, the linear explorers (LinUCB, neural-linear),
EE-Net's pooled gradient without the full gradient, and state round-trips of every explorer."""

import math

import pytest
import torch
import torch.nn.functional as F
from _bandit_helpers import roundtrip, single_thread, states_equal  # noqa: F401  (single_thread: autouse)

from rollout_bandits.bandit import (
    EENet,
    EENetConfig,
    LinUCB,
    LinUCBConfig,
    NeuralLinear,
    NeuralLinearConfig,
    NeuralUCB,
    NeuralUCBConfig,
)
from rollout_bandits.bandit.ee_net import PooledGradient

EXPLORERS = {
    "neural_linear": lambda **kw: NeuralLinear(NeuralLinearConfig(hidden=16, **kw)),
    "neural_ucb": lambda **kw: NeuralUCB(NeuralUCBConfig(hidden=16, **kw)),
    "ee_net": lambda **kw: EENet(EENetConfig(hidden=16, grad_width=16, explore_hidden=16, **kw)),
    "linucb": lambda **kw: LinUCB(LinUCBConfig(**kw)),
}


def _contexts(n, d=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * torch.logspace(-2, 2, d) + 3.0


def _target(x, noise=0.0, seed=0):
    z = (x - 3.0) / torch.logspace(-2, 2, x.shape[1])
    g = torch.Generator().manual_seed(seed)
    return torch.sin(z[:, 0]) + 0.5 * z[:, 1] * z[:, 2] + noise * torch.randn(x.shape[0], generator=g)


def _ridge(f, y, ridge):
    return torch.linalg.solve(torch.eye(f.shape[1], dtype=torch.float64) * ridge + f.T @ f, f.T @ y)


# ------------------------------------------------------------------ training budget
def _count_steps(learner, n):
    steps = []
    orig = learner.optimizer.step
    learner.optimizer.step = lambda *a, **k: (steps.append(1), orig(*a, **k))[1]
    x = _contexts(n, seed=n)
    learner.update_feature_stats(x)
    learner.observe(x, _target(x))
    return len(steps)


@pytest.mark.parametrize("n,passes,ratio,batch,want", [
    (4, 1.0, 1.0, 256, 1), (2048, 1.0, 1.0, 256, 16), (2048, 2.0, 1.0, 256, 32), (2048, 1.0, 3.0, 256, 32),
    (300, 0.5, 1.0, 256, 2), (5, 0.0, 1.0, 256, 0)])
def test_adam_steps_scale_with_the_new_observations(n, passes, ratio, batch, want):
    """ceil(passes * n / c) steps of c = min(n, batch / (1 + replay_ratio)) new pairs: one step for
    an observe of 4 pairs (it was 8 whatever n), 16 for 2,048 (it was 8)."""
    learner = NeuralUCB(NeuralUCBConfig(hidden=8, train_passes=passes, replay_ratio=ratio, train_batch=batch))
    assert _count_steps(learner, n) == want


def test_each_step_mixes_new_pairs_with_replay_in_the_configured_ratio():
    learner = NeuralUCB(NeuralUCBConfig(hidden=8, replay_ratio=3.0, train_batch=64, train_passes=1.0))
    old = _contexts(500, seed=1)
    learner.update_feature_stats(old)
    learner.observe(old, _target(old))
    rows = []
    learner._train_extra = lambda idx, counts: rows.extend(idx.clone().split(counts))
    new = _contexts(40, seed=2)
    learner.observe(new, _target(new))
    newest = set(learner.replay.newest(40).tolist())
    assert [r.numel() for r in rows] == [64, 64, 32]  # 16 + 48, 16 + 48, 8 + 24
    used = torch.cat([r[: min(16, r.numel() // 4)] for r in rows]).tolist()
    assert sorted(used) == sorted(newest)  # every new pair exactly once (train_passes=1)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_written_out_gradients_equal_autograd(activation):
    """The MLP's and EE-Net's f2 training steps use hand-written gradients (no autograd)."""
    e = EENet(EENetConfig(hidden=8, grad_width=8, explore_hidden=8, activation=activation, seed=4))
    x, y = torch.randn(33, 15), torch.randn(33)
    e.mlp.zero_grad()
    F.mse_loss(e.mlp(x), y).backward()
    for p, g in zip(e.mlp.parameters(), e.mlp.mse_gradients(x, y), strict=True):
        assert torch.allclose(p.grad, g, rtol=1e-5, atol=1e-6)
    g, r = torch.randn(33, 8), torch.randn(33)
    e.explore.zero_grad()
    F.mse_loss(e.explore(g)[:, 0], r).backward()
    for p, grad in zip(e.explore.parameters(), e.explore_gradients(g, r), strict=True):
        assert torch.allclose(p.grad, grad, rtol=1e-5, atol=1e-6)


def test_first_observe_without_statistics_standardizes_by_its_own_contexts():
    learner = NeuralUCB(NeuralUCBConfig(hidden=8))
    x = _contexts(64)
    learner.observe(x, _target(x))
    assert learner.feature_stats.count == 64
    assert torch.allclose(learner.feature_stats.mean, x.double().mean(0))


# ------------------------------------------------------------------ LinUCB
def test_linucb_is_exact_ridge_on_the_current_standardization():
    cfg = LinUCBConfig(alpha=0.7, ridge=2.0)
    lin = LinUCB(cfg)
    xs, ys = [], []
    for t in range(4):  # the running moments move after every observe
        x = _contexts(50, seed=t) * (1 + t)
        lin.update_feature_stats(x)
        y = 1e-3 * _target(x, noise=0.1, seed=t) + 5.0
        lin.observe(x[:20], y[:20])
        xs.append(x[:20])
        ys.append(y[:20])
    x, y = torch.cat(xs).double(), torch.cat(ys).double()
    mu, sd = lin.feature_stats.mean, lin.feature_stats.std(cfg.feature_std_floor)
    ly, sy = lin._label_scale()
    z = torch.cat([(x - mu) / sd, torch.ones(x.shape[0], 1, dtype=torch.float64)], 1)
    theta = _ridge(z, (y - ly) / sy, 2.0)
    a_inv = torch.linalg.inv(torch.eye(16, dtype=torch.float64) * 2.0 + z.T @ z)
    q = _contexts(30, seed=9)
    zq = torch.cat([(q.double() - mu) / sd, torch.ones(30, 1, dtype=torch.float64)], 1)
    score, mean, bonus = lin.score(q)
    assert torch.allclose(mean.double(), zq @ theta * sy + ly, rtol=1e-5, atol=1e-7)
    assert torch.allclose(bonus.double(), 0.7 * sy * ((zq @ a_inv) * zq).sum(1).sqrt(), rtol=1e-5, atol=1e-9)
    assert torch.equal(score, mean + bonus)


# ------------------------------------------------------------------ neural-linear
def test_neural_linear_full_head_is_the_ridge_fit_on_current_features():
    nl = NeuralLinear(NeuralLinearConfig(hidden=8, head="full", ridge=1.5, gamma=0.3))
    for t in range(3):
        x = _contexts(40, seed=t)
        nl.update_feature_stats(x)
        nl.observe(x, _target(x, 0.1, seed=t))
    n = nl.replay.size
    f = nl.head_features(nl.standardize(nl.replay.x[:n]))
    ly, sy = nl._label_scale()
    theta = _ridge(f, (nl.replay.y[:n].double() - ly) / sy, 1.5)
    a_inv = torch.linalg.inv(torch.eye(f.shape[1], dtype=torch.float64) * 1.5 + f.T @ f)
    q = _contexts(25, seed=7)
    fq = nl.head_features(nl.standardize(q))
    _, mean, bonus = nl.score(q)
    assert nl.uses_phi
    assert torch.allclose(mean.double(), fq @ theta * sy + ly, rtol=1e-4, atol=1e-5)
    assert torch.allclose(bonus.double(), 0.3 * sy * ((fq @ a_inv) * fq).sum(1).sqrt(), rtol=1e-4, atol=1e-6)


def test_neural_linear_linear_head_equals_linucb_even_after_the_replay_evicts():
    """The [z, 1] block counts pairs the replay dropped: the linear head is LinUCB on every pair."""
    nl = NeuralLinear(NeuralLinearConfig(hidden=8, head="linear", gamma=0.4, replay_capacity=50))
    lin = LinUCB(LinUCBConfig(alpha=0.4))
    for t in range(5):
        x = _contexts(60, seed=t)
        y = _target(x, 0.2, seed=t)
        for e in (nl, lin):
            e.update_feature_stats(x)
            e.observe(x[:35], y[:35])
    assert nl.replay.size == 50 and nl.evicted.count == 5 * 35 - 50
    q = _contexts(40, seed=11)
    for u, v in zip(nl.score(q), lin.score(q), strict=True):
        assert torch.allclose(u, v, rtol=1e-4, atol=1e-5)


def test_neural_linear_keeps_phi_only_where_held_out_pairs_support_it():
    """A linear gain: the held-out pairs never favour phi, so auto scores as LinUCB. A gain no
    linear head fits: phi takes over."""
    def fit(target):
        nl = NeuralLinear(NeuralLinearConfig(hidden=32, holdout=0.2, weight_decay=1e-2, seed=1))
        for t in range(30):
            x = _contexts(128, seed=t)
            nl.update_feature_stats(x)
            nl.observe(x, target(x) + 0.1 * torch.randn(128, generator=torch.Generator().manual_seed(t)))
        return nl

    w = torch.randn(15, generator=torch.Generator().manual_seed(3))
    assert not fit(lambda x: ((x - 3.0) / torch.logspace(-2, 2, 15)) @ w).uses_phi
    assert fit(lambda x: torch.cos(3 * (x[:, 14] - 3.0) / 100) + ((x[:, 13] - 3.0) / 100 * 2) ** 2).uses_phi


def test_held_out_pairs_never_train_the_mlp():
    nl = NeuralLinear(NeuralLinearConfig(hidden=8, holdout=0.5))
    seen = []
    nl._train_extra = lambda idx, counts: seen.append(idx.clone())
    for t in range(3):
        x = _contexts(64, seed=t)
        nl.update_feature_stats(x)
        nl.observe(x, _target(x))
    held = nl.replay.extra["holdout"][:, 0] > 0
    assert 0 < int(held.sum()) < nl.replay.size
    assert not bool(held[torch.cat(seen)].any())


# ------------------------------------------------------------------ EE-Net
def test_pooled_gradient_equals_pooling_the_autograd_gradient():
    """The prefix-sum pooling against the per-row autograd gradient, flattened in parameter
    order and average-pooled by torch (the materialised version it replaces)."""
    for cfg in (EENetConfig(hidden=16, grad_width=16, seed=2), EENetConfig(hidden=7, grad_width=50, activation="gelu"),
                EENetConfig(feature_dim=3, hidden=5, grad_width=64)):
        e = EENet(cfg)
        xs = torch.randn(6, cfg.feature_dim)
        f, g = e.gradient_features(xs)
        rows = []
        for i in range(6):
            e.mlp.zero_grad()
            e.mlp(xs[i: i + 1]).sum().backward()
            rows.append(torch.cat([p.grad.reshape(-1) for p in e.mlp.parameters()]))
        pooled = F.adaptive_avg_pool1d(torch.stack(rows)[:, None, :], cfg.grad_width)[:, 0, :]
        want = pooled / pooled.pow(2).mean(1, keepdim=True).sqrt()
        assert torch.allclose(g, want, rtol=1e-4, atol=1e-5), cfg
        assert torch.allclose(f, e.mlp(xs).detach(), rtol=1e-5, atol=1e-6)


def test_pooled_gradient_bins_cover_every_value_once():
    """Bins wider and narrower than a block row, overlapping bins (17 values into 5 and 40)."""
    g = torch.Generator().manual_seed(0)
    u, v, w, c = (torch.randn(2, k, generator=g) for k in (3, 4, 4, 1))
    flat = torch.cat([(u[:, :, None] * v[:, None, :]).reshape(2, -1), w, c], 1)
    for bins in (5, 40):
        pool = PooledGradient([(3, 4), (1, 4), (1, 1)], bins)
        want = F.adaptive_avg_pool1d(flat[:, None, :], bins)[:, 0, :]
        assert torch.allclose(pool([(u, v), (None, w), (None, c)]), want, atol=1e-6)
        # The same with the biases' 1s implicit: u's last column, w's last entry, all of c.
        u[:, -1], w[:, -1], c[:] = 1.0, 1.0, 1.0
        flat = torch.cat([(u[:, :, None] * v[:, None, :]).reshape(2, -1), w, c], 1)
        want = F.adaptive_avg_pool1d(flat[:, None, :], bins)[:, 0, :]
        pool = PooledGradient([(3, 4), (1, 4), (1, 1)], bins, implicit_one=True)
        assert torch.allclose(pool([(u[:, :-1], v), (None, w[:, :-1]), (None, c[:, :0])]), want, atol=1e-6)


# ------------------------------------------------------------------ every explorer
@pytest.mark.parametrize("name", list(EXPLORERS))
def test_state_dict_resumes_with_identical_decisions(name):
    a = EXPLORERS[name](replay_capacity=48) if name != "linucb" else EXPLORERS[name]()
    make = (lambda: EXPLORERS[name](replay_capacity=48)) if name != "linucb" else EXPLORERS[name]
    for t in range(3):
        x = _contexts(40, seed=t)
        a.update_feature_stats(x)
        a.observe(x[:20], _target(x[:20], 0.1, seed=t))
    b = make()
    b.load_state_dict(roundtrip(a.state_dict()))
    assert states_equal(a.state_dict(), b.state_dict()) == []
    for t in range(3, 6):
        x = _contexts(40, seed=t)
        for e in (a, b):
            e.update_feature_stats(x)
        sa, sb = a.score(x), b.score(x)
        for u, v in zip(sa, sb, strict=True):
            assert torch.equal(u, v)
        top = torch.topk(sa[0], 20).indices
        for e in (a, b):
            e.observe(x[top], _target(x[top], 0.1, seed=t))


@pytest.mark.parametrize("name", list(EXPLORERS))
def test_a_deepcopy_is_an_independent_learner_with_the_same_decisions(name):
    """copy.deepcopy rebuilds from the state: the copy's optimizer still moves the copy's MLP
    (a plain deepcopy would split parameters from the optimizer's flat buffer), the original
    does not move with it, and both decide alike on the same data."""
    import copy

    a = EXPLORERS[name](replay_capacity=48) if name != "linucb" else EXPLORERS[name]()
    x = _contexts(40, seed=0)
    a.update_feature_stats(x)
    a.observe(x[:20], _target(x[:20], 0.1))
    b = copy.deepcopy(a)
    before = roundtrip(a.state_dict())
    for t in range(1, 3):
        x = _contexts(40, seed=t)
        b.update_feature_stats(x)
        b.observe(x[:20], _target(x[:20], 0.1, seed=t))
    assert states_equal(before, a.state_dict()) == []
    assert states_equal(before, b.state_dict()) != []
    for t in range(1, 3):
        x = _contexts(40, seed=t)
        a.update_feature_stats(x)
        a.observe(x[:20], _target(x[:20], 0.1, seed=t))
    assert states_equal(a.state_dict(), b.state_dict()) == []


@pytest.mark.parametrize("name", list(EXPLORERS))
def test_every_explorer_learns_a_gain_it_can_represent(name):
    """Passive learning from 2,048 noisy pairs, 8 an observe: the predicted mean ranks fresh
    contexts (training in proportion to the data: 2 passes, 512 Adam steps in all)."""
    e = EXPLORERS[name](seed=3) if name != "linucb" else EXPLORERS[name]()
    w = torch.randn(15, generator=torch.Generator().manual_seed(5))
    target = (lambda x: ((x - 3.0) / torch.logspace(-2, 2, 15)) @ w) if name == "linucb" else _target
    e.update_feature_stats(_contexts(64, seed=123))
    for t in range(256):
        x = _contexts(8, seed=t)
        e.observe(x, target(x) + 0.1 * torch.randn(8, generator=torch.Generator().manual_seed(t)))
    q = _contexts(512, seed=99)
    corr = float(torch.corrcoef(torch.stack([e.score(q)[1], target(q)]))[0, 1])
    assert corr > 0.8, corr
    assert math.isfinite(float(e.score(q)[2].sum()))


# ------------------------------------------------------------------ FlatAdam
def test_flat_adam_is_torch_adam_with_l2_and_resumes_exactly():
    """The learners' Adam: torch.optim.Adam(fused=True)'s update (L2 weight decay) bit for bit,
    whether the gradients come as tensors or were written into `grads`; the module's parameters
    stay its parameters (views of the flat buffer), and a state round trip continues bit for bit."""
    from rollout_bandits.bandit._online import MLP, FlatAdam

    def make():
        return MLP(6, 8, "relu", torch.Generator().manual_seed(3))

    ours, ref, twin = make(), make(), make()
    opt = FlatAdam(ours, lr=1e-2, weight_decay=1e-2)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2, weight_decay=1e-2, fused=True)
    twin_opt = FlatAdam(twin, lr=1e-2, weight_decay=1e-2)
    g = torch.Generator().manual_seed(0)
    for step in range(20):
        x, y = torch.randn(32, 6, generator=g), torch.randn(32, generator=g)
        opt.step(ours.mse_gradients(x, y, out=opt.grads) if step % 2 else ours.mse_gradients(x, y))
        for p, grad in zip(ref.parameters(), ref.mse_gradients(x, y), strict=True):
            p.grad = grad
        ref_opt.step()
        if step == 9:
            twin.load_state_dict(ours.state_dict())
            twin_opt.load_state_dict(opt.state_dict())
        elif step > 9:
            twin_opt.step(twin.mse_gradients(x, y))
    for a, b, c in zip(ours.parameters(), ref.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
        assert torch.equal(a, c)
    assert opt.flat.data_ptr() == ours.w1.data_ptr()
    with pytest.raises(ValueError, match="FlatAdam"):
        opt.load_state_dict(ref_opt.state_dict())


def test_hidden_bound_holds_and_neural_linear_still_refuses_overflowing_features():
    """neural-linear skips the float32 forward that checks new contexts when MLP.hidden_bound is
    far below float32's range: the bound must hold (|z1|, |h1|, |z2|, |phi| under it) for both
    activations, and contexts whose head features do overflow are still refused, unchanged state."""
    from rollout_bandits.validation import all_finite

    g = torch.Generator().manual_seed(5)
    for act in ("relu", "gelu"):
        mlp = NeuralLinear(NeuralLinearConfig(hidden=8, activation=act, seed=1)).mlp
        for scale in (1e-3, 1.0, 1e3, 1e12):
            x = torch.randn(200, 15, generator=g, dtype=torch.float64) * scale
            x[0] = scale * torch.sign(mlp.w1.detach().double().sum(1))  # a row near the worst case
            with torch.no_grad():
                z = mlp.hidden(x.float())
            bound = mlp.hidden_bound(float(x.abs().max()))
            assert max(float(t.abs().max()) for t in z) <= bound * (1 + 1e-5), (act, scale)
    nl = NeuralLinear(NeuralLinearConfig(hidden=8))
    base = _contexts(64)
    nl.update_feature_stats(base)
    nl.observe(base, _target(base))
    before = roundtrip(nl.state_dict())
    wild = base[:4].clone()
    wild[1, 3] = 3e38  # finite, far outside what the statistics saw: features overflow float32
    with pytest.raises(ValueError, match="overflows after standardization"):
        nl.observe(wild, torch.zeros(4))
    assert states_equal(before, nl.state_dict()) == []
    assert all_finite(nl.head_features(nl.standardize(base), dtype=torch.float32))
