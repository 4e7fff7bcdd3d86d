"""The "before" rows of the regret benchmark: the learners as they were before issue 16 (a
fixed 8 Adam steps per `observe`, raw contexts scored before the first statistics, EE-Net's
materialised gradient), run with their old defaults on the same report cells.

    .venv/bin/python benchmarks/regret_before.py              # -> benchmarks/results/regret_before.json
    .venv/bin/python benchmarks/regret_plot.py                # merges those rows into its table and plot

The old modules are read from git (`--commit`, default the commit issue 16 started from) into
a temporary folder, with their imports of rollout_bandits.bandit._online pointed at the old
copy; they still use today's kernels (the ucb_score kernel's interface did not change). The
policy updates the context statistics after scoring, as the old scheduler did.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from regret_plot import parse_rounds, run_benchmark, summaries, table

from rollout_bandits.bandit.regret import DIM, FAMILIES, REPORT_INSTANCES, SETTINGS, ExplorerPolicy

ROOT = Path(__file__).resolve().parents[1]
BEFORE_COMMIT = "8ddd73d"


def load_old(commit: str, folder: Path) -> tuple:
    """(old neural_ucb module, old ee_net module) from `commit`."""
    for name in ("_online", "neural_ucb", "ee_net"):
        src = subprocess.run(["git", "show", f"{commit}:bandit/{name}.py"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
        (folder / f"_before{name if name.startswith('_') else '_' + name}.py").write_text(
            src.replace("rollout_bandits.bandit._online", "_before_online"))
    sys.path.insert(0, str(folder))
    return importlib.import_module("_before_neural_ucb"), importlib.import_module("_before_ee_net")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commit", default=BEFORE_COMMIT)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--rounds", default="", help="shorter horizons, e.g. obs4=500 (default: SETTINGS')")
    ap.add_argument("--policies", default="neural_ucb@before,ee_net@before")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "regret_before.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        nucb, ee = load_old(args.commit, Path(tmp))
        policies = {
            "neural_ucb@before": lambda spec, seed: ExplorerPolicy(
                nucb.NeuralUCB(nucb.NeuralUCBConfig(feature_dim=DIM, seed=seed)), spec, stats_first=False),
            "ee_net@before": lambda spec, seed: ExplorerPolicy(
                ee.EENet(ee.EENetConfig(feature_dim=DIM, seed=seed)), spec, stats_first=False),
        }
        policies = {k: policies[k] for k in args.policies.split(",")}
        families, settings = args.families.split(","), args.settings.split(",")
        res, elapsed = run_benchmark(policies, families, settings, REPORT_INSTANCES[: args.seeds], "before",
                                     parse_rounds(args.rounds))
    summary = summaries(res)
    out = {"benchmark": "regret, before issue 16", "commit": args.commit, "rounds": args.rounds or "SETTINGS'",
           "command": " ".join([Path(sys.executable).name, *sys.argv]),
           "device": f"{platform.processor() or platform.machine()} CPU, 1 torch thread",
           "torch": torch.__version__, "elapsed_s": elapsed, "results": summary}
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(table(summary, ""))
    print(f"\nwrote {args.json}; {elapsed:.0f} s")


if __name__ == "__main__":
    main()
