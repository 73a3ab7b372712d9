"""What the tiny builders share: the word-level tokenizer, the prompt words, saving (tiny.py)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from vqa_grpo.data.synthetic import VOCABULARY

# Words every prompt may use besides the synthetic vocabulary: the chat roles and the seed's
# instruction "Answer with a single word or short phrase."
PROMPT_WORDS = (
    "system",
    "user",
    "assistant",
    "answer",
    "with",
    "a",
    "single",
    "word",
    "or",
    "short",
    "phrase",
    ".",
    "?",
    ",",
)


def build_word_tokenizer(words: list[str], specials: list[str], unk: str = "<|unk|>") -> Tokenizer:
    """A word-level tokenizer: lower-cased, split on whitespace and punctuation, special tokens first."""
    vocab: dict[str, int] = {}
    for tok in [*specials, unk, *sorted(set(words))]:
        vocab.setdefault(tok, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.add_special_tokens(specials)
    return tok


def _words(words: list[str] | None, extra: tuple[str, ...] = ()) -> list[str]:
    if words is None:
        words = [*VOCABULARY, *PROMPT_WORDS]
    return [*words, *extra]


def _fast_tokenizer(raw: Tokenizer, chat_template: str, **special):
    """A transformers fast tokenizer around ``raw``, left-padding, with the family's chat template.

    ``special`` holds the usual special-token names (``eos_token``, ``pad_token``, ...) and
    ``extra_special_tokens`` (the family's ``image_token``, ``boi_token``, ...).
    """
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<|unk|>", padding_side="left", **special)
    tokenizer.chat_template = chat_template
    return tokenizer


def _save(model, processor, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _set_generation_ids(model, *, eos: int | list[int], pad: int, bos: int | None = None) -> None:
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.generation_config.bos_token_id = bos


def _llama_text(vocab: int, hidden: int, layers: int, *, eos: int, pad: int, bos: int | None = None) -> dict:
    """A tiny Llama text config (LLaVA's Vicuna, SmolVLM's SmolLM2 are Llama models)."""
    return dict(
        model_type="llama",
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
