#!/usr/bin/env bash
# One benchmark command run against two revisions of this repository, interleaved (A B A B ...):
# each revision is checked out in its own git worktree and the command runs there with that
# tree first on PYTHONPATH (the same .venv, the same data). Output of round R of revision X
# goes to OUT/X.R.out; the command may write OUT/X.R.json through the {json} placeholder.
#
#   bash benchmarks/ab_revisions.sh OLD_REV NEW_REV ROUNDS OUT -- python benchmarks/bench_grpo.py \
#       --data $PWD/data/default --variants sync/2 --steps 4 --rounds 1 --no-weight-sync --out {json}
#
# Paths the command reads must be absolute (it runs inside the worktree).
set -euo pipefail
[[ $# -ge 6 && $5 == -- ]] || { echo "usage: $0 REV_A REV_B ROUNDS OUT -- COMMAND..." >&2; exit 2; }
A=$(git rev-parse --short "$1") B=$(git rev-parse --short "$2") ROUNDS=$3 OUT=$(realpath -m "$4"); shift 5
mkdir -p "$OUT"
declare -A TREE
for rev in "$A" "$B"; do
    TREE[$rev]=$(mktemp -d /tmp/ab_tree.XXXXXX)
    git worktree add --detach -f "${TREE[$rev]}" "$rev" >/dev/null
done
trap 'for t in "${TREE[@]}"; do git worktree remove --force "$t"; done' EXIT
for round in $(seq 1 "$ROUNDS"); do
    for rev in "$A" "$B"; do
        name=$rev.$round
        cmd=("${@//\{json\}/$OUT/$name.json}")
        echo "+ [$name] ${cmd[*]}" >&2
        (cd "${TREE[$rev]}" && PYTHONPATH="${TREE[$rev]}" "${cmd[@]}") > "$OUT/$name.out" 2>&1
    done
done
echo "outputs in $OUT" >&2
