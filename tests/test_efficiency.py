"""Issue 13 in the loop: cost accounting, generation-replacing reuse, prompt choices across resume,
the validation split, and the efficiency grid and report section."""

import math

import pytest
from test_train import DECISIONS, tiny

from rollout_bandits.bandit.prompts import PromptSchedulerConfig
from rollout_bandits.bandit.scheduler import SchedulerConfig
from rollout_bandits.experiments import efficiency as eff
from rollout_bandits.experiments.grids import grid
from rollout_bandits.experiments.statistics import cost_ratios
from rollout_bandits.trainer.loop import STAGES, TrainConfig, train
from rollout_bandits.trainer.tasks import make_task

GRESO = PromptSchedulerConfig(policy="greso", candidate_pool=2.0)


def _increments(metrics, key):
    return [b[key] - a[key] for a, b in zip([{key: 0}, *metrics], metrics)]


def test_keep_all_trains_every_generated_token_and_counts_them(tmp_path):
    res = train(tiny(tmp_path, steps=3, scheduler=SchedulerConfig(policy="keep_all")), progress=False)
    ms = res.metrics
    assert _increments(ms, "generated_tokens") == [m["tokens"] for m in ms]  # the batch's response tokens
    assert [m["trained_tokens"] for m in ms] == [m["generated_tokens"] for m in ms]
    assert _increments(ms, "generated") == [16] * 3 and [m["generated_prompts"] for m in ms] == [4] * 3
    for m in ms:
        assert set(m["seconds"]) == set(STAGES) and math.isclose(m["step_seconds"], sum(m["seconds"].values()))


def test_reuse_replaces_half_the_generation(tmp_path):
    """fresh_fraction 0.5: half the prompts generated each round; the cbs scheduler's reuse fills the
    training set; the GRESO rule chooses the generated prompts from a pool of twice the budget."""
    cfg = tiny(tmp_path, steps=4, fresh_fraction=0.5, prompts=GRESO,
               scheduler=SchedulerConfig(window_rounds=2, intra_ratio=1.0, reuse_m=8))
    ms = train(cfg, progress=False).metrics
    assert [m["generated_prompts"] for m in ms] == [2] * 4 and _increments(ms, "generated") == [8] * 4
    assert _increments(ms, "generated_tokens") == [m["tokens"] for m in ms]
    assert sum(m["trained_reused"] for m in ms) > 0
    trained = _increments(ms, "trained_tokens")
    assert all(t >= g for t, g in zip(trained[1:], [m["tokens"] for m in ms[1:]]))  # fresh rows + reused rows
    assert ms[-1]["trained_tokens"] > ms[-1]["generated_tokens"]  # reuse buys updates beyond generation
    assert ms[-1]["prompts"]["prompt_round"] == 4 and ms[-1]["prompts"]["generated_groups"] == 8


@pytest.mark.parametrize("prompts", [GRESO, PromptSchedulerConfig(policy="learned", candidate_pool=2.0)])
def test_resume_makes_identical_prompt_choices_in_the_loop(tmp_path, prompts):
    kw = dict(steps=4, prompts=prompts, prompts_per_step=3)
    straight = train(tiny(tmp_path / "a", **kw), progress=False)
    assert train(tiny(tmp_path / "b", **kw), progress=False, stop_after=2).interrupted
    resumed = train(tiny(tmp_path / "b", **kw), resume=True, progress=False)
    for a, b in zip(straight.metrics, resumed.metrics, strict=True):
        for key in (*DECISIONS, "chosen_prompts", "generated_tokens", "trained_tokens"):
            assert a[key] == b[key], (a["step"], key)
    assert straight.metrics[-1]["prompts"] == resumed.metrics[-1]["prompts"]


def test_validation_split_is_disjoint_and_tuning_evaluates_on_it(tmp_path):
    task = make_task("add", eval_fraction=0.2, val_fraction=0.1)
    train_p = {p.prompt for p in task.sample(300, split="train", seed=1)}
    val_p = {p.prompt for p in task.eval_set(50, split="val")}
    held = {p.prompt for p in task.eval_set(50)}
    assert len(val_p) == len(held) == 50 and not (train_p & val_p or train_p & held or val_p & held)
    small = task.eval_set(10**6, split="val", allow_fewer=True)  # the whole (small) split, no error
    assert 50 <= len(small) < 10**6 and len({p.prompt for p in small}) == len(small)
    with pytest.raises(ValueError, match="TrainConfig.val_fraction"):
        TrainConfig(eval_split="val")
    res = train(tiny(tmp_path, steps=1, eval_split="val", val_fraction=0.1, eval_distinct=True, eval_problems=5),
                progress=False)
    assert res.eval_set_sizes == {"add": 5, "parity": 5, "mod": 5}


@pytest.mark.parametrize("size", list(eff.SIZES))
def test_efficiency_grids_keep_the_issue_structure(size):
    base, runs = grid(size)
    assert base["eval_problems"] >= 500 and base["eval_distinct"] and base["val_fraction"] > 0
    assert {r.group for r in runs} == {size, f"{size}_noise"}
    seeds = {}
    for r in runs:
        seeds.setdefault((r.group, r.labels["optimizer"], r.labels["policy"]), []).append(r.seed)
    for (g, opt, m), s in seeds.items():
        assert s == list(eff.HEADLINE_SEEDS if g == size and m in eff.HEADLINE else
                         eff.SEEDS if g == size else eff.NOISE_SEEDS)
        assert "eval_split" not in next(r for r in runs if r.name.endswith(f"{opt}__{m}__s{s[0]}")).overrides
    assert {m for _, _, m in seeds} == set(eff.METHODS)
    _, tune = grid(f"{size}_tune")
    assert all(r.overrides["eval_split"] == "val" and r.group == f"{size}_tune" for r in tune)
    assert not set(r.seed for r in tune) & set(eff.HEADLINE_SEEDS)
    reuse = next(r for r in runs if r.labels["policy"] == "cbs_reuse").overrides
    half = base["prompts_per_step"] // 2 * base["group_size"]
    assert reuse["fresh_fraction"] == 0.5 and reuse["scheduler"]["reuse_m"] == half


def _rec(method, seed, tokens, evals, opt="grpo"):
    curve = [{"step": 10 * i, "generated": t // 3, "generated_tokens": t, "trained_tokens": t, "wall": t / 100,
              "eval": {"add": e, "mean": e}} for i, (t, e) in enumerate(zip(tokens, evals))]
    n = 10 * (len(evals) - 1)
    return {"name": f"{method}{seed}", "group": "efficiency", "seed": seed, "status": "ok",
            "labels": {"optimizer": opt, "policy": method}, "curve": curve,
            "series": {"reward": [0.1] * n, "zero_variance_share": [0.25] * n},
            "cost": {"generated_tokens": tokens[-1], "trained_tokens": tokens[-1], "eval_set_sizes": {"add": 500}},
            "timings": {"train_seconds": 5.0}}


def test_tokens_to_keep_all_final_and_the_report_section(tmp_path):
    recs = []
    for s in (0, 1, 2):
        recs.append(_rec("keep_all", s, [0, 100, 200, 300], [0.30, 0.32, 0.34, 0.40]))
        recs.append(_rec("cbs_prompt", s, [0, 50, 100, 150], [0.30, 0.38 + 0.01 * s, 0.41, 0.42]))
        recs.append(_rec("greso", s, [0, 100, 200, 300], [0.30, 0.31, 0.33, 0.36]))
    ref = [r for r in recs if r["labels"]["policy"] == "keep_all"]
    # keep-all's final: (.32 + .34 + .40) / 3; cbs_prompt (s=0) crosses it between 0 (.30) and 50 (.38).
    target = (0.32 + 0.34 + 0.40) / 3
    ratios = cost_ratios([r for r in recs if r["labels"]["policy"] == "cbs_prompt"], ref)
    assert ratios[0] == pytest.approx(50 * (target - 0.30) / 0.08 / 300)
    # keep-all's trailing mean reaches its own final only at its last eval: ratio 1.
    assert cost_ratios(ref, ref) == {0: pytest.approx(1.0), 1: pytest.approx(1.0), 2: pytest.approx(1.0)}
    lines = eff.report_section(recs, str(tmp_path), str(tmp_path), rel=lambda p: p)
    text = "\n".join(lines)
    assert "Held-out problems per family (distinct, up to 500" in text and "add 500" in text
    row = next(ln for ln in lines if ln.startswith("| grpo |"))
    assert "reached 3/3" in row and "| yes | yes |" in row and row.endswith("| NO |")  # no PODS runs: not all met
    assert (tmp_path / "results_efficiency.png").is_file()
    # keep-all's own gain, start 30% -> final (.32 + .34 + .40) / 3, the same on every seed.
    assert f"grpo 30.0% at step 0, final minus start {100 * (target - 0.30):.1f} (n=1)" not in text
    assert f"grpo 30.0% at step 0, final minus start {100 * (target - 0.30):.1f} [" in text
