"""The sweep runner and the report: a 2-run micro-grid end to end, and the report from fake results."""

import copy
import json
import os

from rollout_bandits import experiments as ex
from rollout_bandits.cli import build_parser

TINY = {"steps": 2, "prompts_per_step": 3, "group_size": 4, "eval_every": 1, "eval_problems": 2,
        "warmup_steps": 3, "tasks": ["add", "parity"],
        "policy": {"hidden": 16, "n_layers": 1, "n_heads": 2}}


def test_micro_grid_runs_shares_the_warmup_and_records_a_failure(tmp_path):
    specs = [ex.spec("main", "grpo", "keep_all", 0), ex.spec("main", "grpo", "cbs", 0, scheduler={"window_rounds": 2}),
             ex.spec("main", "grpo", "cbs", 0, extra_labels={"bad": "1"}, scheduler={"intra_ratio": 7.0})]
    logged = []
    kw = dict(results_dir=str(tmp_path / "res"), cache_dir=str(tmp_path / "cache"), runs_dir=str(tmp_path / "runs"),
              jobs=1, progress=False, log=logged.append)
    lines = ex.sweep("micro", specs=specs, base=TINY, **kw)
    assert sum(x.startswith(("[1/3,", "[2/3,", "[3/3,")) for x in logged) == 3  # progress without a terminal
    assert sorted(ln["status"] for ln in lines) == ["error", "ok", "ok"]  # the bad run did not stop the sweep
    assert len(os.listdir(tmp_path / "cache")) == 1  # one warm-up for the seed
    recs = {r["name"]: r for r in ex.load_results(str(tmp_path / "res"))}
    ok = [r for r in recs.values() if r["status"] == "ok"]
    assert ok[0]["before"] == ok[1]["before"]  # identical warmed start
    for r in ok:
        assert [c["step"] for c in r["curve"]] == [0, 1, 2]
        assert r["config"]["warmup_steps"] == 0 and r["config"]["policy"]["model_path"]
        assert "selected_arms" not in json.dumps(r)
        assert r["timings"]["train_seconds"] > 0 and 0 <= r["timings"]["scheduling_share"] < 1
    bad = next(r for r in recs.values() if r["status"] == "error")
    assert "intra_ratio" in bad["error"]
    # Existing results are skipped.
    assert ex.sweep("micro", specs=specs[:2], base=TINY, **kw) == []
    assert "2 runs, 2 already done, 0 to run" in logged[-1]


def _fake(name, group, opt, policy, seed, finals, labels=None):
    curve = [{"step": 10 * i, "generated": 640 * i, "wall": 3.0 * i,
              "eval": {"add": f, "parity": f, "mean": f}} for i, f in enumerate(finals)]
    return {"format": ex.FORMAT, "name": name, "group": group, "seed": seed, "status": "ok",
            "labels": {"optimizer": opt, "policy": policy, **(labels or {})},
            "config": {"policy": {"arch": "llama", "n_layers": 2, "hidden": 64}, "difficulty": 1, "steps": 30,
                       "prompts_per_step": 8, "group_size": 8, "lr": 5e-5, "eval_every": 10, "eval_problems": 9,
                       "scheduler": {"gain": "auto", "window_rounds": 4, "intra_ratio": 0.5, "reuse_ratio": 0.5,
                                     "learner": {"gamma": 0.5}, "explorer": "neural_ucb", "candidates": "window"},
                       "loss": {"reuse_weighting": "none"}},
            "curve": curve, "final": curve[-1]["eval"], "before": curve[0]["eval"],
            "series": {"reward": [0.1] * 30, "trained_fresh": [10] * 30, "trained_reused": [0] * 30},
            "timings": {"train_seconds": 9.0, "scheduling_share": 0.02, "probe_share": 0.1,
                        "shared_warmup_seconds": 20.0},
            "device": {"device": "cpu: test"}, "versions": {"torch": "x", "transformers": "y", "python": "z"}}


def test_report_from_fake_results(tmp_path):
    res = tmp_path / "res"
    res.mkdir()
    recs = []
    for s in (0, 1):
        recs.append(_fake(f"k{s}", "main", "grpo", "keep_all", s, [0.3, 0.32, 0.34, 0.40]))
        recs.append(_fake(f"c{s}", "main", "grpo", "cbs", s, [0.3, 0.38, 0.41, 0.42]))
        recs.append(_fake(f"a{s}", "ablation", "grpo", "cbs", s, [0.3, 0.3, 0.31, 0.33],
                          {"axis": "gain", "value": "batch"}))
    for r in recs:
        (res / f"{r['name']}.json").write_text(json.dumps(r))
    bad = copy.deepcopy(recs[0])
    bad.update(name="broken", status="error", error="ValueError: boom")
    (res / "broken.json").write_text(json.dumps(bad))
    out = ex.write_report(str(res), str(tmp_path / "docs" / "RESULTS.md"), str(tmp_path / "docs"))
    text = open(out).read()

    assert "| CBS | 40.3 ± 0.0 | 5.0 ± 0.0 | 42.0 ± 0.0" in text  # last 3 evals: (.38 + .41 + .42) / 3
    # target = keep-all (.32 + .34 + .40) / 3 = .3533, reached between step 0 (.30) and 10 (.38)
    assert "| grpo | 0.22 | 0.74 | yes |" in text  # keep-all reaches its own final at 0.74
    assert "ValueError: boom" in text and "### gain" in text
    assert (tmp_path / "docs" / "results_main.png").is_file()
    assert (tmp_path / "docs" / "results_ablation_gain.png").is_file()


def test_metrics():
    assert abs(ex.first_reach([0, 10, 20], [0.1, 0.2, 0.4], 0.3) - 15) < 1e-9
    assert ex.first_reach([0, 10], [0.1, 0.2], 0.3) is None
    assert abs(ex.auc([{"step": 0, "eval": {"mean": 0.0}}, {"step": 10, "eval": {"mean": 1.0}}]) - 0.5) < 1e-12


def test_cli_has_sweep_and_report():
    p = build_parser()
    a = p.parse_args(["sweep", "--grid", "ablations", "--dry-run"])
    assert a.grid == "ablations" and a.dry_run
    assert p.parse_args(["report"]).command == "report"
    assert p.parse_args(["demo"]).command == "demo"


def test_diagnose_watches_the_run_through_the_train_callback(tmp_path):
    from rollout_bandits.bandit.scheduler import Scheduler

    select = Scheduler.select
    path = ex.write_diagnostics("t", {"scheduler": {"window_rounds": 2}, "verifier_noise": 0.3}, seed=0,
                                results_dir=str(tmp_path / "res"), base=TINY, cache_dir=str(tmp_path / "cache"),
                                runs_dir=str(tmp_path / "runs"))
    assert Scheduler.select is select  # no monkeypatch
    out = json.load(open(path))
    assert out["name"] == "t" and out["summary"]["intra_ratio"] == 0.5
    assert set(out["summary"]["contrast_share"]) == {"first_half", "second_half"}
    assert 0.0 <= out["summary"]["final"] <= 1.0


def test_train_calls_on_step_after_each_selection(tmp_path):
    from rollout_bandits.trainer.loop import config_from_dict, train

    seen = []
    cfg = config_from_dict({**TINY, "out_dir": str(tmp_path / "r")})
    train(cfg, progress=False, log=lambda *_: None,
          on_step=lambda step, plan, batch: seen.append((step, plan.round, batch.num_rollouts)))
    assert seen == [(1, 0, 12), (2, 1, 12)]


def test_report_refuses_a_missing_or_empty_results_folder(tmp_path, capsys):
    from rollout_bandits.cli import main

    out = tmp_path / "RESULTS.md"
    out.write_text("the old report")
    for results in (tmp_path / "typo", tmp_path):
        code = main(["report", "--results", str(results), "--out", str(out), "--fig-dir", str(tmp_path / "f")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "ReportOptions.results" not in err[0] and "report.results" in err[0]
    assert out.read_text() == "the old report" and not (tmp_path / "f").exists()


def test_sweep_rejects_a_bad_pattern_before_running():
    import pytest

    with pytest.raises(ValueError, match="sweep.only"):
        ex.sweep("cpu", only="[", dry_run=True, log=lambda *_: None)
