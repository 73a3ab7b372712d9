"""Rebuild the demo's pretrained tiny base (src/vqa_grpo/demo/base_model/): the recipe of vqa_grpo/demo/base.py.

    .venv/bin/python scripts/build_demo_base.py [--out DIR] [--work DIR]

About 40 minutes on 2 CPU cores (docs/demo.md); prints the model card's figures
and the SHA256 table that vqa_grpo/demo/base.py records.
"""

import argparse
import json

from vqa_grpo.demo.base import BASE_DIR, build_base

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default=str(BASE_DIR), help=f"output directory (default: {BASE_DIR})")
parser.add_argument("--work", default=None, help="scratch directory (default: a new temporary one)")
args = parser.parse_args()
print(json.dumps(build_base(args.out, args.work), indent=2))
