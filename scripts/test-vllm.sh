#!/usr/bin/env bash
# The vLLM suite (tests-vllm/): futuremask served by vLLM's CPU engine equals fm.apply on the
# Hugging Face model. Needs .venv-vllm/ (bash scripts/setup-vllm.sh); fails, never skips, without vLLM.
set -euo pipefail
cd "$(dirname "$0")/.."
export VLLM_ENABLE_V1_MULTIPROCESSING=0
.venv-vllm/bin/ruff check tests-vllm
.venv-vllm/bin/python -m pytest tests-vllm -q -p no:cacheprovider -p no:logging "$@"
