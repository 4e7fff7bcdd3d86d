import math

import pytest
import torch
from _bandit_helpers import roundtrip, single_thread, states_equal  # noqa: F401  (single_thread: autouse)

from rollout_bandits.bandit.ee_net import EENet, EENetConfig
from rollout_bandits.bandit.linucb import LinUCB
from rollout_bandits.bandit.neural_linear import NeuralLinear
from rollout_bandits.bandit.neural_ucb import NeuralUCB, NeuralUCBConfig


def _contexts(n, d=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-2, 2, d)  # features of very different scales, as rollout features are
    return torch.randn(n, d, generator=g) * scale + 3.0


def _target(x):
    z = (x - 3.0) / torch.logspace(-2, 2, x.shape[1])
    return torch.sin(z[:, 0]) + 0.5 * z[:, 1] * z[:, 2]


def test_exported_weights_fold_both_standardizations():
    learner = NeuralUCB(NeuralUCBConfig(gamma=0.7, seed=1))
    x = _contexts(256)
    learner.update_feature_stats(x)
    learner.observe(x[:64], 1e-3 * _target(x[:64]) + 5e-3)
    score, mean, bonus = learner.score(x)
    # The same quantities computed the long way, in float64, on standardized inputs.
    mu, sd = learner.feature_stats.mean, learner.feature_stats.std(learner.config.feature_std_floor)
    ly, sy = learner._label_scale()
    m = learner.mlp
    xs = (x.double() - mu) / sd
    h1 = torch.relu(xs @ m.w1.double() + m.b1.double())
    phi = torch.relu(h1 @ m.w2.double() + m.b2.double())
    want_mean = (phi @ m.w3.double() + m.b3.double()) * sy + ly
    want_bonus = 0.7 * sy * ((phi @ learner.zinv) * phi).sum(1).sqrt()
    assert torch.allclose(mean.double(), want_mean, rtol=1e-4, atol=1e-6 * abs(ly) + 1e-7)
    assert torch.allclose(bonus.double(), want_bonus, rtol=1e-4, atol=1e-9)
    assert torch.allclose(score, mean + bonus)


def test_zinv_is_the_inverse_of_the_design_matrix():
    cfg = NeuralUCBConfig(ridge=2.0, train_passes=1.0)
    learner = NeuralUCB(cfg)
    x = _contexts(96)
    learner.update_feature_stats(x)
    z = torch.eye(cfg.hidden, dtype=torch.float64) * 2.0
    for i in range(3):
        batch = x[32 * i: 32 * (i + 1)]
        with torch.no_grad():
            phi = learner.mlp.hidden(learner.standardize(batch))[3].double()
        z += phi.T @ phi
        learner.observe(batch, _target(batch))
    assert torch.allclose(learner.z, z, rtol=1e-10, atol=1e-8)
    eye = torch.eye(cfg.hidden, dtype=torch.float64)
    assert torch.allclose(learner.zinv @ z, eye, atol=1e-8)


def test_bonus_shrinks_where_arms_were_observed():
    learner = NeuralUCB(NeuralUCBConfig(train_passes=0.0))
    x = _contexts(64)
    learner.update_feature_stats(x)
    before = learner.score(x)[2]
    for _ in range(5):
        learner.observe(x, torch.zeros(64))
    assert bool((learner.score(x)[2] < 0.5 * before).all())


def test_diagonal_bonus_variant():
    learner = NeuralUCB(NeuralUCBConfig(bonus="diag", train_passes=1.0))
    x = _contexts(64)
    learner.update_feature_stats(x)
    learner.observe(x, _target(x))
    w = learner.export_weights()
    assert w.zinv is None and w.zinv_diag is not None
    assert torch.isfinite(learner.score(x)[0]).all()


@pytest.mark.parametrize("make", [lambda: NeuralUCB(NeuralUCBConfig(lr=1e-2, seed=3)),
                                  lambda: EENet(EENetConfig(lr=1e-2, seed=3))], ids=["neural_ucb", "ee_net"])
def test_learns_a_nonlinear_gain(make):
    learner = make()
    x_test = _contexts(512, seed=99)
    for step in range(60):
        x = _contexts(32, seed=step)
        learner.update_feature_stats(x)
        learner.observe(x, 1e-2 * _target(x) + 1e-3 * torch.randn(32))
    mean = learner.score(x_test)[1]
    corr = torch.corrcoef(torch.stack([mean, _target(x_test)]))[0, 1]
    assert corr > 0.8


@pytest.mark.parametrize("make", [NeuralUCB, EENet, NeuralLinear, LinUCB],
                         ids=["neural_ucb", "ee_net", "neural_linear", "linucb"])
def test_bad_input_is_a_value_error_and_leaves_state_unchanged(make):
    learner = make()
    x = _contexts(32)
    learner.update_feature_stats(x)
    learner.observe(x[:16], _target(x[:16]))
    before = roundtrip(learner.state_dict())
    bad_gains = _target(x[:16]).clone()
    bad_gains[3] = float("nan")
    with pytest.raises(ValueError, match="gains"):
        learner.observe(x[:16], bad_gains)
    bad_gains[3] = float("inf")
    with pytest.raises(ValueError, match="gains"):
        learner.observe(x[:16], bad_gains)
    with pytest.raises(ValueError, match=r"contexts.*\[N, 15\]"):
        learner.observe(torch.randn(16, 14), _target(x[:16]))
    with pytest.raises(ValueError, match="contexts"):
        learner.score(torch.randn(4, 16))
    with pytest.raises(ValueError, match="contexts"):
        learner.score(torch.full((4, 15), float("inf")))
    with pytest.raises(ValueError, match="contexts"):
        learner.update_feature_stats(torch.full((4, 15), float("nan")))
    with pytest.raises(ValueError, match="gains"):
        learner.observe(x[:16], torch.zeros(15))
    assert states_equal(before, learner.state_dict()) == []


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="NeuralUCBConfig.gamma"):
        NeuralUCBConfig(gamma=-1.0)
    with pytest.raises(ValueError, match="NeuralUCBConfig.activation"):
        NeuralUCBConfig(activation="tanh")
    with pytest.raises(ValueError, match="NeuralUCBConfig.hidden"):
        NeuralUCBConfig(hidden=0)
    with pytest.raises(ValueError, match="EENetConfig.grad_width"):
        EENetConfig(grad_width=0)
    with pytest.raises(ValueError, match="state"):
        NeuralUCB(NeuralUCBConfig(hidden=8)).load_state_dict(NeuralUCB().state_dict())


def test_gelu_activation_scores_match_its_mlp():
    learner = NeuralUCB(NeuralUCBConfig(activation="gelu", train_passes=1.0))
    x = _contexts(32)
    learner.update_feature_stats(x)
    learner.observe(x, _target(x))
    _, mean, _ = learner.score(x)
    ly, sy = learner._label_scale()
    with torch.no_grad():
        want = learner.mlp(learner.standardize(x)) * sy + ly
    assert torch.allclose(mean, want, rtol=1e-4, atol=1e-5)
    assert math.isfinite(float(mean.sum()))
