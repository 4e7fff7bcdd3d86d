#!/bin/bash
# Usage: tools/attack/bad_inputs.sh [WORKDIR]. Every call must end in one clear error line (exit 2, no traceback)
# and leave the protected run directory unchanged.
# Each line: a bad call; prints exit code, stderr line count, "TB" if a traceback, and the first stderr line.
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RB=${RB:-$ROOT/.venv/bin/rollout-bandits}
W=${1:-$(mktemp -d)}
mkdir -p "$W" && cd "$W"
echo x > afile; mkdir -p adir emptyres
echo '{"steps": ' > bad.json; echo 'steps = ' > bad.toml; echo '[1,2]' > list.json
echo '{"overwrite": "false", "out_dir": "run"}' > ow.json
echo '{"tasks": 5}' > tasks5.json; echo '{"out_dir": 5}' > od5.json; echo '{"probe_fraction": "x"}' > pf.json
T="--warmup-steps 0 --steps 1 --prompts-per-step 2 --group-size 2 --eval-problems 1 --tasks add --policy.hidden 16 --policy.n-layers 1 --policy.n-heads 2 --no-progress"
$RB train $T --out-dir run >/dev/null 2>&1   # an existing run to protect
sha=$(sha1sum run/checkpoint.pt run/metrics.jsonl | sha1sum)
while IFS= read -r line; do
  [ -z "$line" ] && continue
  err=$(eval "$RB $line" 2>&1 >/dev/null); code=$?
  n=$(printf "%s" "$err" | grep -c .)
  tb=$(printf "%s" "$err" | grep -q Traceback && echo TB || echo -)
  printf "%3s %s %s | %s | %s\n" "$code" "$n" "$tb" "$line" "$(printf "%s" "$err" | tail -1 | cut -c1-150)"
done <<'CALLS'
demo --groups 0
demo --groups -1
demo --group-size 0
demo --repeats 0
demo --mean-len -5
demo --device foo
demo --device cuda
demo --groups x
demo --groups 100000000 --mean-len 100000
train --out-dir afile
train --config adir
train --config missing.json
train --config bad.json
train --config bad.toml
train --config list.json
train --config ow.json --overwrite
train --config tasks5.json
train --config od5.json
train --config pf.json
train --steps 0
train --steps three
train --max-grad-norm -1
train --max-grad-norm 0
train --num-threads -3
train --seed -1
train --seed 99999999999999
train --tasks addition
train --lr nan
train --lr inf
train --verifier-noise x
train --out-dir ''
train --resume --out-dir nowhere
train --resume --out-dir run --lr 0.5 --scheduler.policy keep_all
train --resume --overwrite --out-dir run
train --resume --out-dir run --steps 0
train --policy.model-path /nonexistent
train --scheduler.intra-ratio 7
train --scheduler.learner.gamma x
train --generation.backend sglang
train --loss.clip-low 1.5
train --policy.hidden 30 --policy.n-heads 4
train --out-dir run --steps 1
train --foo 1
sweep --only '['
sweep --grid tpu
sweep --jobs 0
sweep --seeds a
sweep --steps 0
report --results typo --out $W/R.md
report --results emptyres --out $W/R.md
diagnose x '{bad'
diagnose ../x '{}'
diagnose x '[1]'
warmup --steps 0
run --resume
CALLS
echo "run dir unchanged: $([ "$sha" == "$(sha1sum run/checkpoint.pt run/metrics.jsonl | sha1sum)" ] && echo yes || echo NO)"
ls "$W"
