"""kill -9 a training run (a) the moment a checkpoint temp file appears (mid-write), (b) at random
moments; resume after each kill; finally compare decisions with an uninterrupted run."""
import json
import os
import random
import signal
import subprocess
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RB = os.environ.get("RB", os.path.join(ROOT, ".venv", "bin", "rollout-bandits"))
W = os.environ.get("ATTACK_DIR", "/tmp/rb-attack-k2")
os.makedirs(W, exist_ok=True)
cfg = {"steps": 24, "prompts_per_step": 8, "group_size": 4, "warmup_steps": 20, "eval_every": 6, "eval_problems": 4,
       "checkpoint_every": 1, "tasks": ["add", "parity"], "verifier_noise": 0.3,
       "policy": {"hidden": 256, "n_layers": 4, "n_heads": 4}}
open(f"{W}/c.json", "w").write(json.dumps(cfg))
if not os.path.exists(f"{W}/ref/checkpoint.pt"):
    subprocess.run([RB, "train", "--config", "c.json", "--out-dir", "ref", "--no-progress", "--overwrite"], cwd=W,
                   check=True, capture_output=True)
rng = random.Random(0)
log = {"mid_write": 0, "random": 0, "takeover_msgs": 0, "tmp_removed_msgs": 0}
def step():
    p = f"{W}/vic/checkpoint.pt"
    return torch.load(p, weights_only=False, mmap=True)["step"] if os.path.exists(p) else None
def start():
    args = ["train", "--resume", "--out-dir", "vic"] if step() is not None else \
        ["train", "--config", "c.json", "--out-dir", "vic", "--overwrite"]
    return subprocess.Popen([RB, *args, "--no-progress"], cwd=W, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
def finish(p):
    out, err = p.communicate()
    log["takeover_msgs"] += out.count("taking over the lock")
    log["tmp_removed_msgs"] += out.count("left by a run that stopped while writing")
    return out, err
for i in range(8):  # (a) mid-write kills
    p = start()
    hit, seen, was, k = False, 0, False, rng.randint(1, 4)  # kill during this process's k-th write
    while p.poll() is None:
        now = os.path.exists(f"{W}/vic/checkpoint.pt.tmp.{p.pid}")
        seen += now and not was
        was = now
        if now and seen == k:
            p.send_signal(signal.SIGKILL)
            hit = True
            break
        time.sleep(0.0005)
    finish(p)
    left = [f for f in os.listdir(f"{W}/vic") if ".tmp." in f]
    log["mid_write"] += hit
    print(f"mid-write kill {i}: hit={hit} (write {k}) checkpoint step {step()} tmp left {left}", flush=True)
for i in range(8):  # (b) random kills
    p = start()
    time.sleep(rng.uniform(5.0, 40.0))
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
        log["random"] += 1
    finish(p)
    print(f"random kill {i}: checkpoint step {step()}", flush=True)
while step() != cfg["steps"]:
    out, err = finish(start())
out, err = finish(start())  # a finished run, resumed once more: nothing to redo
keys = ("reward", "pass_rate", "loss", "trained_fresh", "trained_reused", "selected_arms", "generated", "eval")
a = [json.loads(x) for x in open(f"{W}/ref/metrics.jsonl")]
b = [json.loads(x) for x in open(f"{W}/vic/metrics.jsonl")]
same = [x["step"] for x in a] == [x["step"] for x in b] and all(x.get(k) == y.get(k) for x, y in zip(a, b) for k in keys)
print(log, "identical decisions and evals:", same, "files:", sorted(os.listdir(f"{W}/vic")))
