"""Does the official Phi-3-vision processor, under transformers 4.40.2, read a checkpoint's processor files?

Runs in the throwaway reference venv of scripts/phi3_v_reference.py (transformers 4.40.2; it does
not import vqa_grpo). For each checkpoint directory given, it loads the tokenizer with
``AutoTokenizer`` and the processor with the hub's own ``processing_phi3_v.py`` and
``image_processing_phi3_v.py`` (from --code, copied beside the checkpoint's files in a scratch
folder, as the download has them), encodes the seed's prompt with a 200x120 image, and prints one
JSON line per directory: whether it loaded, the error's first line if not, and whether the
``input_ids``, ``attention_mask``, ``image_sizes`` and ``pixel_values`` equal those of the hub's own
tokenizer files (--hub) with the directory's preprocessor_config.json (its num_crops).

    /tmp/ref-venv/bin/python scripts/phi3_v_processor_check.py --code /tmp/ref/phi3v \\
        --hub ../shared/models/phi-3-vision-128k-instruct RUN/final RUN/checkpoint-2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

PROMPT = (
    "<|user|>\n<|image_1|>\nWhat color is the circle? Answer with a single word or short phrase.<|end|>\n"
    "<|assistant|>\n"
)
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json")
CODE = ("processing_phi3_v.py", "image_processing_phi3_v.py")


def encode(directory: Path, code: Path, preprocessor: Path | None = None):
    """The official processor's output for the prompt, from ``directory``'s tokenizer files and
    ``preprocessor``'s preprocessor_config.json (default: ``directory``'s)."""
    from PIL import Image
    from transformers import AutoProcessor, AutoTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        for name in FILES:
            source = (preprocessor or directory) if name == "preprocessor_config.json" else directory
            if (source / name).is_file():
                shutil.copyfile(source / name, Path(scratch) / name)
        for name in CODE:
            shutil.copyfile(code / name, Path(scratch) / name)
        AutoTokenizer.from_pretrained(scratch)
        processor = AutoProcessor.from_pretrained(scratch, trust_remote_code=True)
        image = Image.new("RGB", (200, 120), (220, 40, 40))
        return processor(PROMPT, [image], return_tensors="pt"), type(processor.tokenizer).__name__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, required=True, help="folder with the hub's processing code files")
    parser.add_argument("--hub", type=Path, required=True, help="the hub's own files (../shared/models/...)")
    parser.add_argument("dirs", type=Path, nargs="+", help="checkpoint directories to read")
    args = parser.parse_args()
    import transformers

    print(json.dumps({"transformers": transformers.__version__}))
    for d in args.dirs:
        want, _ = encode(args.hub, args.code, preprocessor=d)
        try:
            got, tokenizer = encode(d, args.code)
        except Exception as e:  # the point is to report it
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(json.dumps({"dir": str(d), "loaded": False, "error": f"{type(e).__name__}: {first}"}))
            continue
        same = {k: got[k].shape == want[k].shape and bool((got[k] == want[k]).all()) for k in want}
        print(json.dumps({"dir": str(d), "loaded": True, "tokenizer": tokenizer, "equal_to_hub": same}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
