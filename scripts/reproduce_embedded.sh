#!/usr/bin/env bash
# Regenerates the committed results/ on an embedded dataset (CPU, 2 cores: see README for the times).
# The grid is configs/shapes-embedded.yaml by default; CONFIG=configs/scenes-embedded.yaml runs issue 16's
# calibrated set. WORKERS=2 runs the cells in two processes. Every command resumes: rerunning skips finished cells.
set -euo pipefail
export HF_HUB_OFFLINE=1
R=${RESULTS:-results}
CONFIG=${CONFIG:-configs/shapes-embedded.yaml}
mmdd-bench run --config "$CONFIG" --results "$R" --workers "${WORKERS:-1}" "$@"
mmdd-bench report --results "$R" --html
