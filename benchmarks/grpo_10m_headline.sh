#!/usr/bin/env bash
# The guided headline run (attempt 32 in docs/BENCHMARKS.md): GRPO from the shipped 10m warm start,
# one recipe (tune_configs/10m_full_sets.yaml's, self-imitation switched on at step 250), phases
# that differ only in the prompt file, each resumed from the last one's checkpoint. About 90 min of
# step time on a 2-core CPU machine; then the chosen checkpoint on val and test.
#
#   bash benchmarks/grpo_10m_headline.sh            # DATA=data/default RUN=runs/grpo_10m_headline
#   DRY=1 bash benchmarks/grpo_10m_headline.sh      # print the commands only
#   PROMPTS_ONLY=1 bash benchmarks/grpo_10m_headline.sh   # build the four prompt folders (seconds)
#
# Resumable: run it again after an interruption and each phase already past is skipped, the
# interrupted one resumed from the run's last checkpoint.
#
# DATA must be a `tinycompress data --out DIR --n 10000 --seed 0` folder (the warm start's data).
# The phases reproduce how the recorded run was stopped and resumed at these checkpoints; the
# samplers' RNG states are restored on each resume, but Ray scheduling is not deterministic, so
# expect the same picture, not the same bytes.
set -euo pipefail

DATA=${DATA:-data/default}
RUN=${RUN:-runs/grpo_10m_headline}
INIT=${INIT:-serve/assets/compressor_10m}
A=docs/bench/grpo_attempts
PROMPTS=${PROMPTS:-${RUN}_prompts}    # beside the run folder: train refuses a non-empty new run folder
TC=${TC:-tinycompress}

run() { echo "+ $*" >&2; [[ -n "${DRY:-}" ]] || "$@"; }

prompts() {  # NAME [data flags]: DATA's files linked, with its own rl.parquet (4,000 intents, seed 0)
    local dir=$PROMPTS/$1; shift
    [[ -n "${DRY:-}" || ! -e $dir/rl.parquet ]] || return 0      # built by an earlier run
    run mkdir -p "$dir"
    for f in "$DATA"/*; do
        [[ $(basename "$f") == rl.parquet ]] || run ln -sfn "$(realpath "$f")" "$dir/$(basename "$f")"
    done
    run "$TC" data --out "$dir" --rl 4000 --rl-only --seed 0 "$@"
}

done_steps() {  # the step of RUN's latest checkpoint (0 without one)
    local latest=$RUN/checkpoints/latest
    [[ -e $latest ]] || { echo 0; return; }
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["step"])' "$RUN/checkpoints/$(cat "$latest")/state.json"
}

phase() {  # CONFIG PROMPTS UNTIL_STEP [--resume]: skipped when RUN is past UNTIL_STEP, resumed when
           # RUN has a checkpoint (so the script picks up where an interrupted run stopped)
    local resume=${4:-}
    if [[ -z "${DRY:-}" ]]; then
        (( $(done_steps) < $3 )) || { echo "+ phase to step $3: done" >&2; return 0; }
        [[ -e $RUN/checkpoints/latest ]] && resume=--resume
    fi
    run mkdir -p "$PROMPTS"
    [[ -n "${DRY:-}" ]] || sed "s/^  steps: .*/  steps: $3/" "$1" > "$PROMPTS/phase.yaml"
    run "$TC" train --config "$PROMPTS/phase.yaml" --data "$PROMPTS/$2" --init "$INIT" --out "$RUN" $resume
}

prompts rl                                                  # train programs may recur in new words
prompts rl_new --rl-new-programs                            # every intent a new combination
prompts sets50 --rl-new-programs --rl-set-share 0.5         # half of them write a complete set
prompts sets25 --rl-new-programs --rl-set-share 0.25
[[ -z "${PROMPTS_ONLY:-}" ]] || exit 0                      # PROMPTS_ONLY=1: the four prompt folders only

phase $A/try27/config.yaml rl 70                            # set tokens initialised, rewrites imitated
phase $A/try27/config_resumed_steps70-250.yaml rl 170 --resume
phase $A/try27/config_resumed_steps70-250.yaml rl_new 250 --resume
phase $A/try30/config_resumed_from_try27_step250.yaml sets50 280 --resume    # + train.imitate_best
phase $A/try32/config_resumed_from_try30_step280.yaml rl_new 510 --resume
phase $A/try32/config_resumed_steps510-590_setshare25.yaml sets25 590 --resume

# choose by the whole val split, then test once
for step in 570 580 590; do
    run "$TC" eval --checkpoint "$RUN/checkpoints/step_000$step" --data "$DATA" --split val --threads 1
done
echo "then: $TC eval --checkpoint $RUN/checkpoints/step_000N --data $DATA --split test --threads 1" >&2
