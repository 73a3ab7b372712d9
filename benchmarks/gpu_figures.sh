#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, on one GPU (not CI): the GRPO step of a randomly
# initialised ~0.5B-class Qwen2-VL in bf16 (vqa-grpo, TRL, the seed loop, the limit), a smaller
# sweep over G and image size, then the CUDA path of the CLI end to end (cuda_smoke.sh).
# Usage (repo root, with vqa-grpo's dependencies and trl installed): bash benchmarks/gpu_figures.sh
# Writes main.json, sweep.md and the logs under ${OUT:-/tmp/gpu_figures}.
set -uo pipefail
out=${OUT:-/tmp/gpu_figures}; mkdir -p "$out"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, transformers, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"
model=$(mktemp -d)/qwen2-vl-0.5b
python3 - "$model" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
import grpo_step as g
print("model:", g.build_model(g.Settings(model="qwen2-vl-0.5b", image_size=448), Path(sys.argv[1])))
PY
bench="python3 benchmarks/grpo_step.py --device cuda --model $model --dtype bf16"
timeout 200 $bench --json >"$out/main.json" 2>"$out/main.log"
python3 -c "import json, sys; sys.path.insert(0, 'benchmarks'); import grpo_step as g; g.print_table(json.load(open('$out/main.json')))"
timeout 200 $bench --sweep --sizes 224,448 --groups 4,16 --methods vqa_grpo,trl,limit --steps 5 2>"$out/sweep.log" | tee "$out/sweep.md"
timeout 150 bash benchmarks/cuda_smoke.sh 2>&1 | grep -v -E "it/s\]|s/it\]" | tee "$out/smoke.log" | tail -25
# Phi-3-vision at full size (random weights, the real 4.2B architecture), bf16, LoRA, G = 8:
# the shared prefix against the plain path and the seed's loop, at num_crops 4 and 16.
for crops in 4 16; do
  timeout 300 python3 benchmarks/grpo_step.py --device cuda --model phi3-v-full --dtype bf16 --lora 1 \
    --group-size 8 --questions 2 --num-crops $crops --image-size 448 --steps 3 --warmup 1 --json \
    >"$out/phi3_v_crops$crops.json" 2>"$out/phi3_v_crops$crops.log"
  python3 -c "import json, sys; sys.path.insert(0, 'benchmarks'); import grpo_step as g; g.print_table(json.load(open('$out/phi3_v_crops$crops.json')))"
done
