#!/usr/bin/env bash
# PPO (RLlib's, on the token-level environment TinyCompress-v0) against our GRPO, side by side:
# the same warm start (the shipped 10m), the same intents (DATA/rl.parquet, seed 0), the same
# reward (the validator's: +1 pass, -1 fail, -0.01 per IR token, nothing else: GRPO runs
# tune_configs/10m_pure.yaml), the same 2 logical CPUs for the same wall-clock budget, one run
# after the other on an otherwise idle machine. Then the curves (val pass rate and IR tokens
# against programs sampled and against CPU hours) and the throughput table.
#
#   bash benchmarks/ppo_vs_grpo.sh              # DATA=data/default OUT=runs/ppo_vs_grpo BUDGET_S=900
#   DRY=1 bash benchmarks/ppo_vs_grpo.sh        # print the commands only
#   INIT=runs/pure/sft_10m_forms OUT=runs/ppo_vs_grpo_forms BUDGET_S=600 PLOT=docs/img/ppo_vs_grpo_forms.png \
#     JSON=docs/bench/ppo_vs_grpo_forms.json bash benchmarks/ppo_vs_grpo.sh   # from the exploring warm start
#
# Each run stops at BUDGET_S seconds (SIGINT: the run shuts its actors down; metrics.jsonl keeps
# every finished step). A run folder that exists is kept: delete it to run that arm again.
set -euo pipefail

DATA=${DATA:-data/default}
OUT=${OUT:-runs/ppo_vs_grpo}
INIT=${INIT:-serve/assets/compressor_10m}
BUDGET_S=${BUDGET_S:-900}
TC=${TC:-tinycompress}
PY=${PY:-python}

run() { echo "+ $*" >&2; [[ -n "${DRY:-}" ]] || "$@"; }
within_budget() { run timeout -s INT -k 60 "$BUDGET_S" "$@" || { local rc=$?; [[ $rc == 124 || $rc == 130 ]]; }; }

[[ -n "${DRY:-}" || -e $DATA/rl.parquet ]] || run "$TC" data --out "$DATA" --rl 4000 --rl-only --seed 0
run mkdir -p "$OUT"

# GRPO: 8 intents x 8 programs a step, val (200 intents, greedy) every 5 steps = 320 programs
[[ -n "${DRY:-}" || ! -e $OUT/grpo ]] && within_budget "$TC" train --config tune_configs/10m_pure.yaml \
    --data "$DATA" --init "$INIT" --out "$OUT/grpo" --set train.steps=10000 --set train.eval_every=5 \
    --set train.checkpoint_every=10000 --set train.patience=0

# PPO: 128 env steps (tokens) an iteration, minibatches of 64, the same val every 2 iterations
[[ -n "${DRY:-}" || ! -e $OUT/ppo ]] && within_budget "$TC" ppo --config tune_configs/10m_ppo.yaml \
    --data "$DATA" --init "$INIT" --out "$OUT/ppo" --set ppo.iterations=10000 \
    --set ppo.train_batch_size=128 --set ppo.minibatch_size=64 --set ppo.eval_every=2 \
    --set ppo.checkpoint_every=10000

run "$PY" benchmarks/plot_ppo_vs_grpo.py --grpo "$OUT/grpo" --ppo "$OUT/ppo" \
    --out "${PLOT:-docs/img/ppo_vs_grpo.png}" --json "${JSON:-docs/bench/ppo_vs_grpo.json}"
