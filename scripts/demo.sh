#!/usr/bin/env bash
# The main job on the built-in demo, offline: set up .venv/, generate the procedural MileBench-format
# tasks, run every policy with the built-in tiny VLM, score, and print the comparison table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/futuremask eval --demo "$@"
