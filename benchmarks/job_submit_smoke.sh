#!/usr/bin/env bash
# `ray job submit` of a short GRPO run against `ray start --head --num-cpus=2`.
# Exits 0 only if the job exits 0 and wrote its checkpoint. Stops only the Ray it started
# (never `ray stop`, which would kill every Ray instance on the host).
#
#   bash benchmarks/job_submit_smoke.sh            # uses ray / tinycompress from PATH (.venv/bin)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d /tmp/tcjob.XXXXXX)
PY=${PYTHON:-python}
free_ports() { "$PY" -c "
import socket
socks = [socket.socket() for _ in range($1)]
for s in socks: s.bind(('127.0.0.1', 0))
print(' '.join(str(s.getsockname()[1]) for s in socks))"; }
read -r GCS DASH AGENT_HTTP AGENT_GRPC CLIENT METRICS NODE OBJ RTENV <<<"$(free_ports 9)"

cleanup() {
  pkill -f -- "$WORK/ray" 2>/dev/null || true  # only the processes of this head node
  sleep 1; pkill -9 -f -- "$WORK/ray" 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

echo "[job] tiny dataset and init policy under $WORK"
"$PY" - "$WORK" <<'PYEOF'
import sys, yaml
from pathlib import Path
from transformers import AutoTokenizer
from learner.policy import PRESETS, build_policy, save_policy
from rollout.datagen.dataset import build_dataset
work = Path(sys.argv[1])
build_dataset(work / "data", n=100, seed=6, progress=lambda m: None, paraphrases=0)
tok = AutoTokenizer.from_pretrained(str(work / "data" / "tokenizer"))
save_policy(build_policy(PRESETS["tiny"], tok), tok, PRESETS["tiny"], work / "init", {"stage": "init"})
cfg = yaml.safe_load(open("tune_configs/tiny.yaml"))
cfg["grpo"] = {"lr": 1e-3, "max_completion_length": 12}
cfg["train"] = {"steps": 2, "prompts_per_step": 2, "group_size": 2, "rollout_workers": 1, "validator_actors": 1,
                "max_new_tokens": 12, "eval_every": 2, "eval_samples": 4, "checkpoint_every": 2}
(work / "tiny.yaml").write_text(yaml.safe_dump(cfg))
PYEOF

start_head() {
  ray start --head --num-cpus=2 --temp-dir="$WORK/ray" --port="$GCS" --dashboard-host=127.0.0.1 \
    --dashboard-port="$DASH" --dashboard-agent-listen-port="$AGENT_HTTP" --dashboard-agent-grpc-port="$AGENT_GRPC" \
    --ray-client-server-port="$CLIENT" --metrics-export-port="$METRICS" --node-manager-port="$NODE" \
    --object-manager-port="$OBJ" --runtime-env-agent-port="$RTENV" --disable-usage-stats >"$WORK/ray_start.log" 2>&1
}
for attempt in 1 2; do  # on a loaded host the raylet can miss Ray's 30 s start deadline once
  echo "[job] ray start --head --num-cpus=2 (attempt $attempt)"
  if start_head; then break; fi
  tail -3 "$WORK/ray_start.log"
  pkill -f -- "$WORK/ray" 2>/dev/null || true; sleep 2; pkill -9 -f -- "$WORK/ray" 2>/dev/null || true
  rm -rf "$WORK/ray"
  [ "$attempt" = 2 ] && { cat "$WORK/ray_start.log"; exit 1; }
  read -r GCS DASH AGENT_HTTP AGENT_GRPC CLIENT METRICS NODE OBJ RTENV <<<"$(free_ports 9)"
done

"$PY" - "$DASH" <<'PYEOF'  # the job server lives in the dashboard, which starts after `ray start` returns
import sys, time, urllib.request, urllib.error
deadline = time.monotonic() + 120
while True:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/version", timeout=5)
        break
    except urllib.error.HTTPError:
        break  # it answers (an auth error is an answer)
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("the dashboard did not come up in 120 s")
        time.sleep(1)
PYEOF

echo "[job] ray job submit (RAY_AUTH_MODE=token: the CLI must send the cluster's auth token)"
start=$(date +%s)
RAY_AUTH_MODE=token RAY_ADDRESS="http://127.0.0.1:$DASH" ray job submit --working-dir . -- \
  tinycompress train --config "$WORK/tiny.yaml" --data "$WORK/data" --init "$WORK/init" --out "$WORK/run"
echo "[job] job exited 0 after $(( $(date +%s) - start )) s"
test -f "$WORK/run/checkpoints/latest"
ckpt="$WORK/run/checkpoints/$(cat "$WORK/run/checkpoints/latest")"
test -f "$ckpt/model.safetensors" && test -f "$ckpt/optimizer.safetensors" && test -f "$ckpt/state.json"
echo "[job] checkpoint written: $(basename "$ckpt") ($(python3 -c "import json;print(json.load(open('$ckpt/state.json'))['step'])") steps)"
echo "JOB_SUBMIT_OK"
