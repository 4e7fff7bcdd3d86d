"""The prompt scheduler (bandit/prompts.py): bounded history, skipped prompts coming back, resume
making identical choices, GRESO's rule, and bad input."""

import math

import pytest
import torch
from _bandit_helpers import roundtrip, single_thread  # noqa: F401  (single_thread: autouse)

from rollout_bandits.bandit.prompts import (
    PROMPT_FEATURE_NAMES,
    PromptLearnerConfig,
    PromptScheduler,
    PromptSchedulerConfig,
    prompt_key,
)


def learner(gamma=1.0):
    return PromptLearnerConfig(hidden=16, gamma=gamma, train_batch=64)


def groups(pass_prob: torch.Tensor, g: torch.Generator, size: int = 8) -> torch.Tensor:
    """Flat binary rewards: `size` Bernoulli(pass_prob[i]) draws per chosen prompt."""
    return (torch.rand(pass_prob.numel(), size, generator=g) < pass_prob[:, None]).float().flatten()


def dead_and_fresh(ps: PromptScheduler, rounds: int, seed: int = 0, dead: int = 30, budget: int = 8):
    """Each round: `budget` candidates drawn from `dead` prompts that always give all-wrong groups,
    then `budget` never-seen prompts that pass half the time. Returns the dead prompts generated
    per round."""
    g = torch.Generator().manual_seed(seed)
    next_new, out = 1000, []
    for _ in range(rounds):
        keys = torch.cat([torch.randperm(dead, generator=g)[:budget], torch.arange(next_new, next_new + budget)])
        next_new += budget
        choice = ps.choose(keys, budget)
        k = keys[choice.chosen]
        ps.observe(choice, groups(torch.where(k < dead, 0.0, 0.5), g), 8)
        out.append([int(x) for x in k if x < dead])
    return out


def test_history_stays_bounded_and_evicts_the_least_recently_generated():
    ps = PromptScheduler(PromptSchedulerConfig(policy="none", history_capacity=20))
    g = torch.Generator().manual_seed(0)
    order = []
    for t in range(60):
        keys = torch.arange(5 * t, 5 * t + 5)  # 5 new prompts a round, 300 in all
        if t % 7 == 0:
            keys[0] = 0  # prompt 0 keeps being generated: it is never the least recent
        choice = ps.choose(keys, 5)
        ps.observe(choice, groups(torch.full((5,), 0.5), g), 8)
        order += keys.tolist()
        assert len(ps.history) <= 20
        assert all(t.numel() == 20 for t in ps.history.slot.values())
    # Capacity 20 = the last 4 rounds: the kept prompts are exactly those (prompt 0 among them, last
    # generated at round 56); every one of the 300 insertions (0 comes back every 7 rounds, after
    # its eviction, in place of a new prompt) but the last 20 evicted one.
    assert set(ps.history.index) == set(order[-20:]) and 0 in ps.history.index
    assert ps.history.evicted_total == 300 - 20
    assert ps.stats()["prompt_history_size"] == 20


def test_learned_policy_skips_uninformative_prompts():
    ps = PromptScheduler(PromptSchedulerConfig(policy="learned", explore_share=0.0, learner=learner()))
    dead = dead_and_fresh(ps, 80)
    # First round: no labels yet, the first `budget` candidates (all dead) are taken.
    assert len(dead[0]) == 8
    assert sum(map(len, dead[40:])) / (40 * 8) < 0.1  # later almost only the informative fresh prompts


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_exploration_brings_skipped_prompts_back(gamma):
    """Prompts skipped as uninformative are retried now and then (the uniform share of the budget);
    without exploration (no uniform share, no bonus, history that never fades) they never are."""
    explored = PromptScheduler(PromptSchedulerConfig(policy="learned", explore_share=0.125, learner=learner(gamma)))
    greedy = PromptScheduler(PromptSchedulerConfig(policy="learned", explore_share=0.0, history_half_life=None,
                                                   learner=learner(0.0)))
    back = dead_and_fresh(explored, 100)
    never = dead_and_fresh(greedy, 100)
    assert sum(map(len, never[40:])) == 0
    assert len({k for r in back[40:] for k in r}) >= 15  # most of the 30 dead prompts were retried
    assert sum(map(len, back[40:])) / (60 * 8) < 0.15  # ... now and then, not all the time


def test_a_skipped_prompt_scores_more_the_longer_it_is_skipped():
    """Its own history fades toward its family's: it looks more and more like an unseen prompt."""
    ps = PromptScheduler(PromptSchedulerConfig(policy="learned", history_half_life=8.0, learner=learner()))
    dead_and_fresh(ps, 40)
    ps.history.slot["last_round"][ps.history.index[3]] = ps.round - 1  # prompt 3: dead, just generated
    scores = []
    for _ in range(40):
        choice = ps.choose(torch.tensor([3]), 1)
        scores.append(float(choice.mean[0]))
        ps.pending = None
    w = PROMPT_FEATURE_NAMES.index("history_weight")
    assert choice.contexts[0, w] < 0.05  # nearly an unseen prompt of its family
    assert scores[-1] > scores[0] + 0.3  # predicted informativeness rose toward an unseen prompt's


@pytest.mark.parametrize("policy", ["learned", "greso"])
def test_resume_makes_identical_prompt_choices(policy):
    cfg = PromptSchedulerConfig(policy=policy, learner=learner(), history_capacity=64)
    a = PromptScheduler(cfg, seed=3)
    g = torch.Generator().manual_seed(1)
    truth = torch.rand(200, generator=g)

    def rounds(ps, gen, n):
        out = []
        for _ in range(n):
            keys = torch.randint(0, 200, (24,), generator=gen)
            choice = ps.choose(keys, 8, families=keys % 3, lengths=(keys % 7).float())
            k = keys[choice.chosen]
            ps.observe(choice, groups(truth[k], gen), 8, rollout_scores=truth[k] * 0.1)
            out.append(k.tolist())
        return out

    rounds(a, g, 30)
    b = PromptScheduler(cfg, seed=3)
    b.load_state_dict(roundtrip(a.state_dict()))
    ga, gb = torch.Generator(), torch.Generator()
    ga.set_state(g.get_state())
    gb.set_state(g.get_state())
    assert rounds(a, ga, 20) == rounds(b, gb, 20)
    assert a.stats() == b.stats()


def test_greso_keeps_a_zero_variance_prompt_with_probability_p_to_its_streak():
    cfg = PromptSchedulerConfig(policy="greso", greso_step=0.0, greso_p_init=0.5)
    ps = PromptScheduler(cfg, seed=0)
    choice = ps.choose(torch.tensor([1, 2, 3]), 3)
    # 1: all wrong, 2: all right, 3: mixed.
    ps.observe(choice, torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0, 1.0, 1.0, 0.0]), 4)
    choice = ps.choose(torch.tensor([1, 2]), 2)
    ps.observe(choice, torch.tensor([0.0] * 4 + [1.0] * 4), 4)  # streaks of 2 for prompts 1 and 2
    n = 4000
    keys = torch.tensor([1, 2, 3, 4]).repeat(n)  # 4 was never generated
    choice = ps.choose(keys, keys.numel())  # the budget takes everything: only the draws matter
    kept = (~choice.skipped).view(n, 4).float().mean(0)
    assert torch.equal(choice.chosen, torch.arange(keys.numel()))
    assert abs(kept[0] - 0.25) < 0.03 and abs(kept[1] - 0.25) < 0.03  # 0.5 ** 2
    assert kept[2] == 1.0 and kept[3] == 1.0  # informative or unseen: never skipped
    assert torch.allclose(choice.score[:4], torch.tensor([0.25, 0.25, 1.0, 1.0]))


def test_greso_generates_the_first_unskipped_candidates_and_fills_with_skipped_ones():
    ps = PromptScheduler(PromptSchedulerConfig(policy="greso", greso_p_init=0.05, greso_p_min=0.05,
                                               greso_step=0.0), seed=0)
    choice = ps.choose(torch.arange(6), 6)
    ps.observe(choice, torch.tensor([0.0] * 8 * 4 + [0.0, 1.0] * 8), 8)  # 0-3 all wrong, 4-5 mixed
    keys = torch.tensor([0, 4, 1, 2, 5, 3])
    choice = ps.choose(keys, 4)
    skipped = choice.skipped.tolist()
    keep = [i for i in range(6) if not skipped[i]]
    assert choice.chosen.tolist() == sorted((keep + [i for i in range(6) if skipped[i]])[:4])
    assert not skipped[1] and not skipped[4]  # the informative prompts are never skipped


def test_greso_controller_moves_the_keep_probabilities_toward_the_target_shares():
    ps = PromptScheduler(PromptSchedulerConfig(policy="greso", greso_step=0.1), seed=0)
    for _ in range(10):  # every group all-correct: too many easy groups, too few hard ones
        choice = ps.choose(torch.arange(4), 4)
        ps.observe(choice, torch.ones(16), 4)
    st = ps.stats()
    assert st["greso_p_easy"] == pytest.approx(0.05) and st["greso_p_hard"] == pytest.approx(0.95)
    assert st["zero_variance_share"] == 1.0


def test_none_takes_the_first_candidates_and_records_zero_variance():
    ps = PromptScheduler(PromptSchedulerConfig(policy="none"))
    choice = ps.choose(torch.arange(10), 4)
    assert choice.chosen.tolist() == [0, 1, 2, 3]
    ps.observe(choice, torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5]), 2)
    assert ps.stats()["last_zero_variance_share"] == 0.75


def test_gain_labels_with_missing_groups_train_on_the_labelled_ones():
    ps = PromptScheduler(PromptSchedulerConfig(policy="learned", label="gain", learner=learner()))
    choice = ps.choose(torch.arange(4), 4)
    with pytest.raises(ValueError, match="labels"):
        ps.observe(choice, torch.zeros(8), 2)
    ps.observe(choice, torch.zeros(8), 2, labels=torch.tensor([0.1, float("nan"), -0.2, 0.3]))
    assert ps.learner.num_observed == 3 and len(ps.history) == 4


def test_bad_input_is_a_clear_error_and_changes_nothing():
    ps = PromptScheduler(PromptSchedulerConfig(policy="learned", learner=learner(), num_families=2))
    with pytest.raises(ValueError, match=r"PromptScheduler.choose.budget"):
        ps.choose(torch.arange(3), 4)
    with pytest.raises(ValueError, match=r"PromptScheduler.choose.families"):
        ps.choose(torch.arange(3), 2, families=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"PromptScheduler.choose.keys"):
        ps.choose(torch.arange(3.0), 2)
    assert ps.round == 0
    choice = ps.choose(torch.arange(3), 2)
    state = ps.state_dict()
    with pytest.raises(ValueError, match=r"PromptScheduler.observe.group_offsets"):
        ps.observe(choice, torch.zeros(5), torch.tensor([0, 2, 4]))
    with pytest.raises(ValueError, match=r"PromptScheduler.observe.rewards"):
        ps.observe(choice, torch.tensor([0.0, math.nan, 1.0, 1.0]), 2)
    assert ps.history.index == {} and ps.learner.num_observed == 0
    ps.observe(choice, torch.tensor([0.0, 1.0, 1.0, 1.0]), 2)
    with pytest.raises(ValueError, match=r"PromptScheduler.observe.choice"):
        ps.observe(choice, torch.tensor([0.0, 1.0, 1.0, 1.0]), 2)  # already observed
    with pytest.raises(ValueError, match="PromptSchedulerConfig.candidate_pool"):
        PromptSchedulerConfig(candidate_pool=0.5)
    with pytest.raises(ValueError, match="PromptSchedulerConfig.learner.feature_dim"):
        PromptSchedulerConfig(learner=PromptLearnerConfig(feature_dim=3))
    assert PromptSchedulerConfig(learner={"gamma": 2.0}).learner.feature_dim == len(PROMPT_FEATURE_NAMES)
    other = PromptScheduler(PromptSchedulerConfig(policy="greso"))
    with pytest.raises(ValueError, match="state"):
        other.load_state_dict(state)


def test_prompt_keys_are_stable_and_distinguish_prompts():
    assert prompt_key("47+85=") == prompt_key("47+85=") != prompt_key("47+86=")
    assert prompt_key([1, 2, 3]) == prompt_key((1, 2, 3)) != prompt_key([1, 2, 4])
    assert -(2**63) <= prompt_key("x") < 2**63
    with pytest.raises(ValueError, match="prompt_key.prompt"):
        prompt_key([object()])
