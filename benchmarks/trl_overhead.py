"""Per-step overhead of CBSGRPOTrainer against plain GRPOTrainer on the embedded tiny model.

    .venv/bin/python benchmarks/trl_overhead.py [--steps 12] [--threads 1]

Same model (build_policy(): the 2-layer Llama of `make run`), data, reward, seed and
GRPOConfig for every arm; each arm trains `--steps` steps and the first two are dropped
(warm-up). Step time is TRL's own `step_time` metric (training_step: generation, scoring,
the adapter, loss and backward). The adapter's own share is also timed directly
(`_cbs_schedule`: its no-grad forwards, the features, the selection and the re-padding).
Writes benchmarks/results/trl_overhead_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def _arms():
    from rollout_bandits import SchedulerConfig

    return {
        "plain_grpo": None,
        "cbs_batch_gain": SchedulerConfig(policy="cbs", gain="batch"),
        "cbs_heldout_gain": SchedulerConfig(policy="cbs", gain="heldout"),
        "keep_all": SchedulerConfig(policy="keep_all", gain="batch"),
    }


def reward(completions, answer, **_):
    return [float(c.strip() == a) + 0.1 * (len(c) % 3) for c, a in zip(completions, answer)]


def run_arm(name, sched_cfg, steps: int, out_dir: str) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rollout_bandits.integrations.trl import CBSGRPOTrainer, char_tokenizer_fast
    from rollout_bandits.trainer.policy import build_policy

    model, _ = build_policy()
    pairs = [(a, b) for a in range(20) for b in range(20)]
    data = Dataset.from_dict({"prompt": [f"{a}+{b}=" for a, b in pairs], "answer": [str(a + b) for a, b in pairs]})
    args = GRPOConfig(output_dir=out_dir, per_device_train_batch_size=32, num_generations=8, max_completion_length=16,
                      max_steps=steps, learning_rate=1e-3, logging_steps=1, report_to=[], use_cpu=True,
                      save_strategy="no", seed=0, disable_tqdm=True)
    kw = dict(model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=char_tokenizer_fast())
    if sched_cfg is None:
        tr = GRPOTrainer(**kw)
        adapter = []
    else:
        tr = CBSGRPOTrainer(scheduler_config=sched_cfg, **kw)
        adapter = []
        inner = tr._cbs_schedule

        def timed(out):
            t0 = time.perf_counter()
            r = inner(out)
            adapter.append(time.perf_counter() - t0)
            return r

        tr._cbs_schedule = timed
    tr.train()
    step_times = [h["step_time"] for h in tr.state.log_history if "step_time" in h][2:]
    res = {"arm": name, "steps_timed": len(step_times), "median_step_s": statistics.median(step_times),
           "step_times_s": step_times}
    if adapter:
        res["median_adapter_s"] = statistics.median(adapter[2:])
        res["rows_trained_per_step"] = tr.cbs_counters["rows_chosen"] / tr.cbs_counters["rounds"]
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in _arms().items():
            results.append(run_arm(name, cfg, a.steps, os.path.join(tmp, name)))
            r = results[-1]
            print(f"{name:18s} median step {r['median_step_s'] * 1e3:8.1f} ms"
                  + (f"   adapter {r['median_adapter_s'] * 1e3:7.1f} ms" if "median_adapter_s" in r else ""))
    base = results[0]["median_step_s"]
    for r in results[1:]:
        r["overhead_vs_plain"] = r["median_step_s"] / base - 1.0
        r["adapter_share_of_step"] = r["median_adapter_s"] / r["median_step_s"]
    import trl

    dev = f"{platform.processor() or platform.machine()} CPU, {a.threads} torch thread(s), {os.cpu_count()} cores"
    meta = {"device": dev, "torch": torch.__version__, "trl": trl.__version__, "python": sys.version.split()[0],
            "command": "python benchmarks/trl_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "config": "build_policy() 2-layer Llama; 32 completions (4 prompts x 8) of <= 16 tokens per step",
            "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"trl_overhead_cpu_t{a.threads}.json"
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
