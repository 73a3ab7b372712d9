#!/usr/bin/env bash
# Create .venv when missing and install vqa-grpo into it with the tested versions (constraints.txt).
# Usage: bash scripts/setup.sh [EXTRAS]   e.g. bash scripts/setup.sh test,semantic
# --no-compile: not every installed module is byte-compiled at install (a fresh install of
# test,semantic,wandb,deepspeed took 79 s against 151 s), only those runs import (the end below).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
spec="."
[ -n "${1:-}" ] && spec=".[$1]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-compile -c constraints.txt -e "$spec"
# Byte-compile, once, the modules every process of a run imports (the installed ones of this list),
# rather than in each of the first processes that import them (a run, a launch's ranks, pytest's
# workers); whatever else a run imports is compiled when first imported.
env -u PYTHONDONTWRITEBYTECODE .venv/bin/python - <<'PY'
import importlib
import importlib.util

for name in (
    "torch", "transformers.modeling_utils", "transformers.generation.utils", "accelerate", "peft", "datasets",
    "safetensors.torch", "PIL.Image", "deepspeed", "wandb", "hypothesis", "pytest", "xdist",
    "vqa_grpo.cli", "vqa_grpo.training.loop", "vqa_grpo.evaluation.evaluate",
):
    if importlib.util.find_spec(name.split(".")[0]) is not None:
        importlib.import_module(name)
PY
