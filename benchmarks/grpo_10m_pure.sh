#!/usr/bin/env bash
# Pure GRPO end to end, from the shipped 10m warm start, with its supervised control:
#   1. the exploring warm start: 300 SFT steps on drawn equivalent forms (tune_configs/10m_forms.yaml)
#   2. the control: 300 SFT steps on the minimal forms, same start, same budget (10m_minimal_sft.yaml)
#   3. what each samples at temperature 1 on val (benchmarks/explore_stats.py)
#   4. pure GRPO variants from (1) (tune_configs/10m_pure.yaml and the VARIANTS below)
#   5. every variant's best checkpoint (by its val reward) on the whole val split; the winner,
#      and the warm starts and the control, on test and heldout once (tinycompress eval, 1 thread)
#
#   bash benchmarks/grpo_10m_pure.sh          # DATA=data/default OUT=runs/pure
#   DRY=1 bash benchmarks/grpo_10m_pure.sh    # print the commands only
#
# Resumable: a finished stage is skipped (its output exists); a GRPO run with checkpoints resumes.
# About 2.5 h on a 2-core CPU machine without bf16 (docs/TRAINING.md has each stage's cost).
set -euo pipefail

DATA=${DATA:-data/default}
OUT=${OUT:-runs/pure}
INIT=${INIT:-serve/assets/compressor_10m}
TC=${TC:-tinycompress}
PY=${PY:-python}
B=docs/bench/pure

run() { echo "+ $*" >&2; [[ -n "${DRY:-}" ]] || "$@"; }
done_if() { [[ -z "${DRY:-}" && -e "$1" ]]; }

# name and the lines that differ from tune_configs/10m_pure.yaml (sed expressions)
VARIANTS=(
    "p1_lr2e-5:"
    "p2_lr5e-5:s/^  lr: 2.0e-5/  lr: 5.0e-5/"
    "p3_lr5e-5_t0.7:s/^  lr: 2.0e-5/  lr: 5.0e-5/;s/^  temperature: 1.0/  temperature: 0.7/"
)

run mkdir -p "$OUT" "$B"
done_if "$DATA/stats.json" || run "$TC" data --out "$DATA" --n 10000 --seed 0
done_if "$DATA/rl.parquet" || run "$TC" data --out "$DATA" --rl 4000 --rl-only --seed 0

for name in forms minimal; do
    cfg=tune_configs/10m_${name}.yaml; [[ $name == minimal ]] && cfg=tune_configs/10m_minimal_sft.yaml
    done_if "$OUT/sft_10m_$name/sft_summary.json" ||
        run "$TC" sft --config "$cfg" --data "$DATA" --init "$INIT" --out "$OUT/sft_10m_$name"
done

for ck in shipped:$INIT forms:$OUT/sft_10m_forms minimal:$OUT/sft_10m_minimal; do
    done_if "$B/explore_${ck%%:*}.json" ||
        run "$PY" benchmarks/explore_stats.py --checkpoint "${ck#*:}" --data "$DATA" --out "$B/explore_${ck%%:*}.json"
done

for v in "${VARIANTS[@]}"; do
    name=${v%%:*} edit=${v#*:} dir=$OUT/grpo_$name
    run mkdir -p "$dir"
    [[ -n "${DRY:-}" ]] || sed "$edit" tune_configs/10m_pure.yaml > "$dir.yaml"
    resume=(); [[ -e "$dir/checkpoints/latest" ]] && resume=(--resume)
    done_if "$dir/done.json" || {
        run "$TC" train --config "$dir.yaml" --data "$DATA" --init "$OUT/sft_10m_forms" --out "$dir" "${resume[@]}" &&
        [[ -n "${DRY:-}" ]] || echo '{"done": true}' > "$dir/done.json"; }
    done_if "$B/val_$name.json" ||
        run "$TC" eval --checkpoint "$dir/best" --data "$DATA" --split val --threads 1 --out "$B/val_$name.json"
done

# the variant with the best whole-val pass rate (then fewer IR tokens) is the result; test it once
best=$([[ -n "${DRY:-}" ]] && echo p1_lr2e-5 || "$PY" - "$B" "${VARIANTS[@]%%:*}" <<'EOF'
import json, sys
b, names = sys.argv[1], sys.argv[2:]
score = lambda n: (lambda m: (m["pass_rate"], -m["program_tokens_mean"]))(json.load(open(f"{b}/val_{n}.json"))["model"])
print(max(names, key=score))
EOF
)
echo "best variant on val: $best" >&2
for arm in forms:$OUT/sft_10m_forms minimal:$OUT/sft_10m_minimal pure:$OUT/grpo_$best/best; do
    for split in test heldout; do
        done_if "$B/${split}_${arm%%:*}.json" ||
            run "$TC" eval --checkpoint "${arm#*:}" --data "$DATA" --split $split --threads 1 --out "$B/${split}_${arm%%:*}.json"
    done
done
run "$PY" benchmarks/plot_grpo.py --out docs/img/grpo_pure_curves.png --time docs/img/grpo_pure_curves_time.png --frontier docs/img/grpo_pure_frontier.png \
    $(for v in "${VARIANTS[@]}"; do echo "${v%%:*}=$OUT/grpo_${v%%:*}"; done)
