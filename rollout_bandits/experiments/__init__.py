"""Experiment sweeps, their report and the selection diagnostics (issues 6/7).

    rollout-bandits sweep --grid cpu          # main grid + verifier-noise grid (reduced, CPU budget)
    rollout-bandits sweep --grid ablations    # gain signal, window size, k / ratio, gamma, explorer, IS
    rollout-bandits sweep --grid gpu          # the full grid (more seeds and steps), for a GPU host
    rollout-bandits report                    # docs/RESULTS.md + docs/results_*.png from the result files
    rollout-bandits diagnose NAME OVERRIDES   # what CBS's selection picks, against PODS

One concern per module: `grids` (what runs), `runner` (running them, one JSON per run: the
method), `statistics` (the metrics: their definitions), `report` (Markdown and figures),
`diagnose` (the selection diagnostics).
"""

from rollout_bandits.experiments.diagnose import diagnose_run, write_diagnostics
from rollout_bandits.experiments.grids import GRIDS, RunSpec, grid, spec
from rollout_bandits.experiments.report import write_report
from rollout_bandits.experiments.runner import FORMAT, RESULTS_DIR, load_results, run_one, sweep
from rollout_bandits.experiments.statistics import auc, final_of, first_reach

__all__ = [
    "FORMAT",
    "GRIDS",
    "RESULTS_DIR",
    "RunSpec",
    "auc",
    "diagnose_run",
    "final_of",
    "first_reach",
    "grid",
    "load_results",
    "run_one",
    "spec",
    "sweep",
    "write_diagnostics",
    "write_report",
]
