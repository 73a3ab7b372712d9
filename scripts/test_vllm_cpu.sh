#!/usr/bin/env bash
# The real-engine tests of grpo.generation_backend=vllm (tests/grpo/test_vllm_real.py,
# test_vllm_gemma3_real.py) in .venv-vllm, vLLM's CPU build.
# Usage: bash scripts/setup_vllm_cpu.sh && bash scripts/test_vllm_cpu.sh [PYTEST ARGS]
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
# The real engine, then the backend's stand-in tests and the shared prefix under vLLM's transformers.
exec .venv-vllm/bin/python -m pytest -q -p no:cacheprovider tests/grpo/test_vllm_real.py tests/grpo/test_vllm_multi_image.py \
  tests/grpo/test_vllm_gemma3_real.py \
  tests/grpo/test_vllm_backend.py \
  tests/models/test_prefix.py -k "not ddp" "$@"
