#!/usr/bin/env bash
# Regenerates the committed results/ on the embedded shapes dataset (CPU, 2 cores: see README for the time).
# The grid is configs/shapes-embedded.yaml; every command resumes: rerunning skips finished cells.
set -euo pipefail
export HF_HUB_OFFLINE=1
R=${RESULTS:-results}
mmdd-bench run --config configs/shapes-embedded.yaml --results "$R" "$@"
mmdd-bench report --results "$R" --html
