#!/usr/bin/env bash
# Create .venv when missing and install vqa-grpo into it with the tested versions (constraints.txt).
# Usage: bash scripts/setup.sh [EXTRAS]   e.g. bash scripts/setup.sh test,semantic
# --no-compile: each module is byte-compiled when it is first imported (unless PYTHONDONTWRITEBYTECODE
# is set), not all of them at install.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
spec="."
[ -n "${1:-}" ] && spec=".[$1]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-compile -c constraints.txt -e "$spec"
