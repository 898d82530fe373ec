#!/usr/bin/env bash
# The lmms-eval plugin's suite (tests-lmms/): set up .venv-lmms/, then run it; offline, the real lmms-eval command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-lmms.sh
.venv/bin/ruff check tests-lmms
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv-lmms/bin/python -m pytest tests-lmms -p no:cacheprovider "$@"
