#!/usr/bin/env bash
# Set up .venv-lmms/ for the lmms-eval plugin (futuremask[lmms]): a venv layered on .venv/ (scripts/setup.sh),
# so torch, transformers and futuremask are the very ones of .venv/, plus lmms-eval 0.7.3 and what it needs.
# Not in .venv/ itself: lmms-eval needs filelock<4 and (through pytablewriter) python-dateutil<3, older
# than .venv/ has. lmms-eval goes in with --no-deps: its metadata pulls torchvision (and a CUDA torch).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
LMMS_EVAL=lmms-eval==0.7.3
bash scripts/setup.sh
base=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if [ ! -x .venv-lmms/bin/python ]; then
    python3 -m venv .venv-lmms
fi
own=$(.venv-lmms/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$base" > "$own/_futuremask_base_venv.pth"   # .venv/'s packages, after .venv-lmms/'s own
if ! .venv-lmms/bin/python -c "import lmms_eval, futuremask.integrations.lmms_eval.model" >/dev/null 2>&1 \
        || [ pyproject.toml -nt .venv-lmms/.futuremask-installed ]; then
    .venv-lmms/bin/python -m pip install -q --disable-pip-version-check --no-warn-conflicts --no-deps "$LMMS_EVAL"
    .venv-lmms/bin/python -m pip install -q --disable-pip-version-check --no-warn-conflicts -e ".[dev,lmms]"
    touch .venv-lmms/.futuremask-installed
fi
