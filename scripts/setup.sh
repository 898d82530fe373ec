#!/usr/bin/env bash
# Create .venv/ (if needed) and install futuremask into it: torch==2.13.0 first (the CPU build here),
# then the package with its test and training extras (TRL, PEFT: the training tests use them). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c "import torch, futuremask" >/dev/null 2>&1 || [ pyproject.toml -nt .venv/.futuremask-installed ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,train]"
    touch .venv/.futuremask-installed
fi
