#!/usr/bin/env bash
# Download, into .whl/, the gateway's dependencies that the lent GPU machines lack (they have
# Python 3.12 with torch, transformers, numpy, Pillow, prometheus-client, PyYAML, httpx and
# scikit-image, but not FastAPI, LitServe and the rest), at the versions of the local set-up
# (MAAS_VENV, default .venv; py-spy at its newest where the set-up lacks it), as cp312 manylinux
# wheels: about 20 MB.
#
#   scripts/gpu_wheels.sh
#
# Then on the GPU machine, from the repository root (loadtests/README.md has the whole command):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD python3 loadtests/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MAAS_VENV:-.venv}
PACKAGES=(fastapi fastapi-offline uvicorn httptools orjson python-multipart pydantic pydantic-settings SQLAlchemy alembic redis litserve py-spy)
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$VENV/bin/python" -m pip freeze --exclude-editable | grep -v '^-e ' > "$constraints"
rm -rf .whl
"$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 \
    --constraint "$constraints" -d .whl "${PACKAGES[@]}"
du -sh .whl
