#!/usr/bin/env bash
# Regenerates the committed results/ on the embedded shapes dataset (CPU, about 2 hours on 2 cores).
# Every command resumes: rerunning skips finished cells.
set -euo pipefail
export HF_HUB_OFFLINE=1
R=${RESULTS:-results}
SEEDS=0,1,2
# Baselines and CovMatch at the embedded size grid, each set scored under both protocols.
mmdd-bench run --results "$R" --methods random,herding,covmatch --sizes 50,100 --seeds $SEEDS \
  --protocol trainable-text,frozen-text
# Random at 2N and 5N, to compare CovMatch-N with larger random subsets.
mmdd-bench run --results "$R" --methods random --sizes 200,250,500 --seeds $SEEDS
# CovMatch ablations at N=100: frozen text encoder (prior work's space), no mean term, no online update.
mmdd-bench run --results "$R" --methods covmatch --sizes 100 --seeds $SEEDS --set covmatch.text_trainable=false
mmdd-bench run --results "$R" --methods covmatch --sizes 100 --seeds $SEEDS --set covmatch.lambda=0
mmdd-bench run --results "$R" --methods covmatch --sizes 100 --seeds $SEEDS --set covmatch.online_update=false
# MTT-VL (frozen-text, its own protocol; the same 5 experts serve every seed and size), scored with its
# learned step sizes and, as a second row, with the protocol's learning rates.
mmdd-bench run --results "$R" --methods mtt-vl --sizes 50,100 --seeds $SEEDS
mmdd-bench run --results "$R" --methods mtt-vl --sizes 50,100 --seeds $SEEDS --set eval.use_learned_lrs=false
mmdd-bench report --results "$R" --html
