#!/usr/bin/env bash
# The CUDA path end to end on a GPU machine (not part of CI): synthetic data, the tiny model, SFT,
# GRPO and evaluation with train.device=cuda and bf16 autocast, then the median GRPO step time of
# a larger random Qwen2-VL (hidden 896, 24 layers) in bf16. Prints figures; writes under ${OUT:-/tmp}.
# Usage (repo root): PYTHONPATH=src bash benchmarks/cuda_smoke.sh
set -euo pipefail
out=${OUT:-/tmp/cuda_smoke}; mkdir -p "$out"; w=$(mktemp -d)
py() { python3 -m vqa_grpo.cli "$@"; }
nvidia-smi -L
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
py data synth --out "$w/data" --n 3000
py model tiny --out "$w/tiny"
common="data.path=$w/data data.eval_fraction=0.2 train.device=cuda train.mixed_precision=bf16 train.progress=false eval.max_new_tokens=4"
py sft $common model.name_or_path=$w/tiny train.output_dir=$w/sft train.max_steps=300 train.learning_rate=2e-4 train.per_device_batch_size=16
py train $common model.name_or_path=$w/sft/final train.output_dir=$w/grpo train.max_steps=30 train.learning_rate=1e-4 \
  train.per_device_batch_size=16 grpo.num_generations=8 grpo.temperatures=[0.7,1.0] grpo.top_ps=[0.9,1.0] grpo.max_completion_length=4 \
  reward.components=[vqa_accuracy,composite] reward.weights=[0.5,0.5] grpo.beta=0.04
py evaluate --model $w/grpo/final --data $w/data --out "$out/eval" train.device=cuda eval.max_new_tokens=4
python3 - "$w" <<'PY'
import json, statistics, sys
rows = [json.loads(x) for x in open(f"{sys.argv[1]}/grpo/metrics.jsonl") if '"reward"' in x]
print("tiny GRPO on cuda: median step", round(statistics.median(r["step_seconds"] for r in rows[5:]), 4), "s;",
      "kl at the last step", round(rows[-1]["kl"], 5), "; reward", round(rows[-1]["reward"], 3))
PY
python3 -c "from vqa_grpo.models.tiny import build_tiny_qwen2_vl as b; b('$w/big', hidden=896, layers=24, heads=14, vision_dim=640, vision_depth=8, vision_heads=10)"
py train $common model.name_or_path=$w/big model.dtype=bf16 train.output_dir=$w/big-grpo train.max_steps=12 \
  train.per_device_batch_size=2 grpo.num_generations=8 grpo.max_completion_length=8 data.eval_fraction=0 data.max_train_samples=200
python3 - "$w" <<'PY'
import json, statistics, sys
rows = [json.loads(x) for x in open(f"{sys.argv[1]}/big-grpo/metrics.jsonl") if '"reward"' in x]
print("larger Qwen2-VL (bf16) GRPO, 2 questions x G=8, 8 new tokens: median step", round(statistics.median(r["step_seconds"] for r in rows[2:]), 4), "s")
PY
