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
# Byte-compile, once, the modules that runs and the tests import (those installed), rather than in
# each of the first processes that import them (pytest's workers and a launch's ranks at once);
# whatever else a run imports is compiled when first imported.
env -u PYTHONDONTWRITEBYTECODE .venv/bin/python - <<'PY'
import importlib
import importlib.util

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava", "llava_next", "idefics3", "smolvlm", "gemma3", "phi4_multimodal")
for name in (
    "torch", "torch._dynamo", "torch._inductor.compile_fx", "torch.utils.tensorboard", "torchvision",
    "transformers.modeling_utils", "transformers.generation.utils", "accelerate", "peft", "datasets",
    "safetensors.torch", "PIL.Image", "PIL.PngImagePlugin", "deepspeed", "wandb", "tensorboard", "networkx",
    "scipy.stats", "sklearn.metrics", "sentence_transformers", "matplotlib.pyplot", "num2words", "rich",
    "hypothesis.strategies", "pytest", "xdist", "av", "vqa_grpo.cli", "vqa_grpo.training.loop",
    "vqa_grpo.evaluation.evaluate",
    *(f"transformers.models.{f}.{kind}_{f}" for f in FAMILIES for kind in ("modeling", "processing")),
):
    if importlib.util.find_spec(name.split(".")[0]) is None:
        continue
    try:
        importlib.import_module(name)
    except ImportError as e:  # a module some version lacks: it is compiled when a run imports it
        print(f"setup.sh: not precompiled: {name} ({e})")
PY
