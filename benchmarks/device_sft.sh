#!/usr/bin/env bash
# Warm-start SFT of a preset on a lent GPU machine (the `device` tool), then evaluation.
# Usage (from the repo root on the device): [EVAL=0] [LIMIT=N] [MAX_STEPS=N] bash benchmarks/device_sft.sh PRESET [pack]
# Needs .carry/wheels (jsonschema, fastjsonschema, transformers==5.23.0 wheels for cp312)
# and .carry/data (the output of `tinycompress data --n 10000 --seed 0`), carried with the tree.
set -euo pipefail
preset=$1; pack=${2:-}
python3 -m pip install -q --no-index --no-deps .carry/wheels/*.whl
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1
out=${OUT:-/tmp/out}; ck=/tmp/ck_$preset
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
/usr/bin/time -v python3 -m cluster.cli sft --config tune_configs/$preset.yaml --data .carry/data \
    --out $ck --device cuda ${MAX_STEPS:+--max-steps $MAX_STEPS} 2> >(grep -v "it/s\]" | tail -30 >&2) | tee $out/sft_$preset.json
cp $ck/sft_summary.json $out/sft_summary_$preset.json; cp $ck/sft_log.jsonl $out/sft_log_$preset.jsonl
[ "${EVAL:-1}" = 1 ] && for split in test heldout; do
  python3 -m cluster.cli eval --checkpoint $ck --data .carry/data --split $split --device cuda --limit ${LIMIT:-0} \
      > $out/eval_${preset}_${split}_cuda.json 2>/dev/null
  python3 -c "import json; d=json.load(open('$out/eval_${preset}_${split}_cuda.json')); m=d['model']; print('$split', m['pass_rate'], m['compression_mean'], m['program_tokens_mean'], m['failures_by_code'], 'baseline', d['baseline']['pass_rate'])"
done
if [ -n "$pack" ]; then  # bring the checkpoint home in parts of < 16 MiB
  tar -C /tmp -cf /tmp/ck_$preset.tar ck_$preset && split -b 15M /tmp/ck_$preset.tar $out/ck_$preset.tar.part-
fi
ls -la $out
