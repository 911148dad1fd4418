#!/usr/bin/env bash
# The transfer matrix on the embedded shapes set (CPU): sets distilled with one image encoder, scored with the
# other. Needs the tiny grid of scripts/reproduce_embedded.sh in the same results folder (its N=100 sets).
#   (a) distils configs/shapes-transfer.yaml: the embedded grid's methods at N=100, seeds 0-2, backbone tiny-vit,
#       each scored under its own protocol;
#   (b) scores every N=100 set that a tiny run made with tiny-vit, and every tiny-vit set with tiny
#       (mmdd-bench eval --backbone, each set under its method's own protocol);
#   then rebuilds the reports (results/leaderboard/shapes.transfer-matrix.md, the page).
# Every step resumes: finished cells and evaluations are skipped. Arguments go to step (a)'s `mmdd-bench run`
# (e.g. --methods random,covmatch --seeds 0); EVAL_ARGS to every step (b) evaluation (e.g. "--set eval.epochs=2").
# Every step uses the cache of MMDD_BENCH_CACHE (else the user cache), the results folder of RESULTS (results/).
set -euo pipefail
export HF_HUB_OFFLINE=1
R=${RESULTS:-results}
SIZE=${SIZE:-100}
read -r -a EVAL <<< "${EVAL_ARGS:-}"
mmdd-bench run --config configs/shapes-transfer.yaml --results "$R" "$@"
for direction in "tiny tiny-vit" "tiny-vit tiny"; do
  read -r source target <<< "$direction"
  python -m mmdd_bench.transfer --results "$R" --distilled-with "$source" --size "$SIZE" > "$R/.transfer-$source.txt"
  echo "scoring $(wc -l < "$R/.transfer-$source.txt") sets distilled with $source with $target" >&2
  while read -r artifact; do
    mmdd-bench eval "$artifact" --backbone "$target" --results "$R" --skip-done --quiet "${EVAL[@]}" > /dev/null
  done < "$R/.transfer-$source.txt"
  rm -f "$R/.transfer-$source.txt"
done
mmdd-bench report --results "$R" --html
