"""kill -9 a tiny training run at random moments (many during checkpoint writes: checkpoint_every=1),
resume each time, and compare the decisions with an uninterrupted run."""
import json
import os
import random
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RB = os.environ.get("RB", os.path.join(ROOT, ".venv", "bin", "rollout-bandits"))
W = os.environ.get("ATTACK_DIR", "/tmp/rb-attack-k")
os.makedirs(W, exist_ok=True)
cfg = {"steps": 30, "prompts_per_step": 8, "group_size": 4, "warmup_steps": 20, "eval_every": 5, "eval_problems": 4,
       "checkpoint_every": 1, "tasks": ["add", "parity"], "verifier_noise": 0.3,
       "policy": {"hidden": 32, "n_layers": 1, "n_heads": 2}}
open(f"{W}/c.json", "w").write(json.dumps(cfg))
subprocess.run([RB, "train", "--config", "c.json", "--out-dir", "ref", "--no-progress", "--overwrite"], cwd=W,
               check=True, capture_output=True)
rng = random.Random(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
kills, takeovers, removed, attempts = 0, 0, 0, 0
args = ["train", "--config", "c.json", "--out-dir", "vic", "--no-progress", "--overwrite"]
while True:
    attempts += 1
    p = subprocess.Popen([RB, *args], cwd=W, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    delay = rng.uniform(2.0, 9.0)
    try:
        out, err = p.communicate(timeout=delay)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        out, err = p.communicate()
        kills += 1
        takeovers_before = takeovers
    else:
        takeovers += out.count("taking over the lock")
        removed += out.count("left by a run that stopped while writing")
        if p.returncode == 0:
            break
        print("exit", p.returncode, err[-300:])
    ckpt = os.path.exists(f"{W}/vic/checkpoint.pt")
    args = ["train", "--resume", "--out-dir", "vic", "--no-progress"] if ckpt else \
        ["train", "--config", "c.json", "--out-dir", "vic", "--no-progress", "--overwrite"]
    takeovers += out.count("taking over the lock")
    removed += out.count("left by a run that stopped while writing")
    print(f"attempt {attempts}: killed after {delay:.1f}s, checkpoint {'yes' if ckpt else 'no'}, tmp files "
          f"{[f for f in os.listdir(W + '/vic') if '.tmp.' in f]}", flush=True)
keys = ("reward", "pass_rate", "loss", "trained_fresh", "trained_reused", "selected_arms", "generated", "eval")
a = [json.loads(x) for x in open(f"{W}/ref/metrics.jsonl")]
b = [json.loads(x) for x in open(f"{W}/vic/metrics.jsonl")]
same = [x["step"] for x in a] == [x["step"] for x in b] and all(x.get(k) == y.get(k) for x, y in zip(a, b) for k in keys)
print(f"kills {kills}, lock takeovers logged {takeovers}, stale temp files removed {removed}, "
      f"identical decisions and evals: {same}, leftover tmp: {[f for f in os.listdir(W + '/vic') if '.tmp.' in f]}")
