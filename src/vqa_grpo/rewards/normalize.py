"""The two text normalisations every reward and metric shares.

* ``answer_tokens`` / ``normalize_text``: the seed's composite-reward preprocessing (section 3.3).
  Exactly: lowercase (``str.lower``), split on whitespace (``str.split()``), strip punctuation from
  both edges of each token (``EDGE_PUNCTUATION``: every Unicode character of category P* plus
  ASCII ``string.punctuation``, which adds the symbols $+<=>^`|~), drop tokens left empty, and join
  with single spaces. So "Red." == "red", "  A  red car! " -> "a red car", "c++" -> "c", "(2)" -> "2",
  "$5" -> "5", while inner punctuation stays ("t-shirt", "don't", "1,000", "3.5").
* ``normalize_answer``: the official VQA v2 answer normalisation, reproducing
  ``processDigitArticle(processPunctuation(text))`` of GT-Vision-Lab/VQA
  ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` (master, 2021), quirks included (see below).
"""

from __future__ import annotations

import re
import string
import unicodedata
from functools import lru_cache

# ---------------------------------------------------------------------------------------------
# The composite reward's preprocessing.

EDGE_PUNCTUATION = "".join(
    sorted(
        set(string.punctuation)
        # planes 0 and 1 hold every P* character (scanning all 17 planes costs 0.2 s at import)
        | {c for c in map(chr, range(0x20000)) if unicodedata.category(c).startswith("P")}
    )
)
"""Characters stripped from token edges: Unicode punctuation (P*) and ASCII ``string.punctuation``."""

_CACHED_LEN = 256  # texts up to this length are cached: GRPO scores the same strings many times


def _tokenize(text: str) -> tuple[str, ...]:
    out = []
    for word in text.lower().split():
        if not (word[0].isalnum() and word[-1].isalnum()):  # skip the (slow) strip when clean
            word = word.strip(EDGE_PUNCTUATION)
            if not word:
                continue
        out.append(word)
    return tuple(out)


# Bounded: about 5 MB at most (benchmarks/soak.py --tracemalloc).
_tokenize_cached = lru_cache(maxsize=1 << 13)(_tokenize)


def answer_tokens(text: str) -> tuple[str, ...]:
    """The composite reward's tokens of ``text`` (rules in the module docstring)."""
    return _tokenize_cached(text) if len(text) <= _CACHED_LEN else _tokenize(text)


def normalize_text(text: str) -> str:
    """The composite reward's normalised string: ``" ".join(answer_tokens(text))``."""
    return " ".join(answer_tokens(text))


# ---------------------------------------------------------------------------------------------
# The official VQA v2 normalisation (vqaEval.py, master). Upstream ran under Python 2, where
# ``\d`` in a pattern compiled without re.UNICODE matches only ASCII digits; re.ASCII keeps that.

VQA_PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
"""vqaEval.py's ``punct`` list, in its order. Note: no period, colon, apostrophe, * # $ % & ~."""

# Upstream writes "(?!<=\d)(\.)(?!\d)": the first group is a negative *lookahead* for "<=" and a
# digit (a typo for a lookbehind), which never fires before a ".", so the pattern is "\.(?!\d)":
# every period not followed by a digit ("3.5" keeps its period, "3." and "a.b" lose it).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)", re.ASCII)
_PERIOD_STRIP_COUNT = 32
"""Upstream calls ``periodStrip.sub("", outText, re.UNICODE)``: re.UNICODE (== 32) lands in the
``count`` argument, so at most 32 periods are removed."""

VQA_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
"""vqaEval.py's ``manualMap`` (note "none" -> "0")."""

VQA_ARTICLES = ("a", "an", "the")

VQA_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
"""vqaEval.py's ``contractions`` table, verbatim (its keys with capitals, like "Im", can never match
lower-cased text, and it maps "somebody'd" to "somebodyd"; both as upstream)."""


def process_punctuation(text: str) -> str:
    """vqaEval.py ``processPunctuation``.

    For each character p of ``VQA_PUNCTUATION`` in order: if the *original* text has p next to a
    space (``p + " "`` or ``" " + p``) or has a digit-comma-digit anywhere, every p is deleted;
    otherwise every p becomes a space. Then up to 32 periods not followed by a digit are deleted.
    So "1,000" -> "1000", "yes, it is" -> "yes it is", "red,blue" -> "red blue", "3.5." -> "3.5".
    """
    return _punctuation(text, _COMMA_STRIP, _PERIOD_STRIP)


def _punctuation(text: str, comma_strip: re.Pattern, period_strip: re.Pattern) -> str:
    """The punctuation step above, with the digit-comma and period patterns of one convention."""
    out = text
    digit_comma = comma_strip.search(text) is not None
    for p in VQA_PUNCTUATION:
        if p + " " in text or " " + p in text or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return period_strip.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """vqaEval.py ``processDigitArticle``: lowercase, split on whitespace, map number words
    (``VQA_NUMBER_WORDS``), drop articles, expand ``VQA_CONTRACTIONS``, join with single spaces."""
    words = [VQA_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(VQA_CONTRACTIONS.get(w, w) for w in words if w not in VQA_ARTICLES)


def normalize_answer(text: str) -> str:
    """The official VQA answer normalisation: ``process_digit_article(process_punctuation(text.strip()))``.

    E.g. "Two dogs." -> "2 dogs", "1,000" -> "1000", "The Cat" -> "cat", "dont" -> "don't".
    (The official *accuracy* also turns "\\n" and "\\t" into spaces first; see ``vqa_accuracy``.)
    """
    return process_digit_article(process_punctuation(text.strip()))


# ---------------------------------------------------------------------------------------------
# lmms-eval's EvalAIAnswerProcessor (lmms_eval/tasks/_task_utils/vqa_eval_metric.py, itself from
# facebookresearch/mmf), the normalisation behind most published VQA figures of VLMs. Its tables
# (punctuation, number words, articles, contractions) are vqaEval.py's; what differs:
# * its patterns run under Python 3 without re.ASCII, so ``\d`` is any Unicode digit ("٣.");
# * its digit-comma test is "(?<=\d)(\,)+(?=\d)": "1,,000" counts as one, unlike vqaEval.py's;
# * the processor called as a function (TextVQA, OK-VQA, VizWiz in lmms-eval) first lower-cases,
#   deletes every "," and "?", and writes "'s" as " 's" (``evalai_answer``); VQA v2's accuracy
#   calls only the punctuation and digit/article steps (``evalai_normalize``).

_EVALAI_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_EVALAI_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")


def evalai_punctuation(text: str) -> str:
    """lmms-eval's ``process_punctuation``: ``process_punctuation`` with its two patterns (above)."""
    return _punctuation(text, _EVALAI_COMMA_STRIP, _EVALAI_PERIOD_STRIP)  # count: upstream's re.UNICODE too


def evalai_normalize(text: str) -> str:
    """lmms-eval's VQA v2 answer form: ``process_digit_article(evalai_punctuation(text))``."""
    return process_digit_article(evalai_punctuation(text))


def evalai_answer(text: str) -> str:
    """lmms-eval's ``EvalAIAnswerProcessor()(text)``: lower-case, delete "," and "?", "'s" -> " 's",
    strip, tabs and newlines to spaces, strip, then ``evalai_normalize``."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return evalai_normalize(text.replace("\n", " ").replace("\t", " ").strip())
