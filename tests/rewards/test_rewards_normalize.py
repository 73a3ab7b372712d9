"""The two normalisations: the composite's token rules and the official VQA answer normalisation.

The VQA cases are derived by hand from vqaEval.py's processPunctuation / processDigitArticle.
"""

import pytest

from vqa_grpo.rewards import normalize_answer
from vqa_grpo.rewards.normalize import answer_tokens, normalize_text, process_digit_article, process_punctuation


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("Red.", ("red",)),  # lowercase, edge period stripped
        ("  A  red car! ", ("a", "red", "car")),  # whitespace collapsed, articles kept
        ("t-shirt", ("t-shirt",)),  # inner punctuation stays
        ("don't", ("don't",)),
        ("1,000", ("1,000",)),
        ("3.5", ("3.5",)),
        ("c++", ("c",)),  # '+' is ASCII punctuation, stripped at the edge
        ("(2)", ("2",)),
        ("$5", ("5",)),
        ("...", ()),  # nothing left
        ("¿Qué?", ("qué",)),  # Unicode punctuation (category P*) too
        ("«oui» — non", ("oui", "non")),  # the dash alone becomes empty and is dropped
        ("", ()),
    ],
)
def test_composite_tokens(text, tokens):
    assert answer_tokens(text) == tokens
    assert normalize_text(text) == " ".join(tokens)


def test_long_text_is_tokenised_without_cache():
    text = "word. " * 1000  # 6000 characters, over the cache limit
    assert answer_tokens(text) == ("word",) * 1000


@pytest.mark.parametrize(
    "text, out",
    [
        ("yes, it is", "yes it is"),  # ", " is in the text: every ',' deleted
        ("red,blue", "red blue"),  # no ', ' or ' ,', no digit-comma-digit: ',' -> ' '
        ("1,000", "1000"),  # digit-comma-digit: every listed punctuation deleted
        ("1,000 - 2", "1000  2"),  # '-' deleted too (digit comma anywhere), spaces left as they are
        ("t-shirt", "t shirt"),  # '-' with no space next to it -> ' '
        ("x - y", "x  y"),  # ' -' present: '-' deleted
        ("What?", "What "),  # '?' -> ' '
        ("c++", "c  "),
        ("(2)", " 2 "),
        ("$5", "$5"),  # '$' is not in the list
        ("it's", "it's"),  # nor is the apostrophe
        ("3.5", "3.5"),  # a period followed by a digit stays
        ("3.", "3"),  # any other period goes
        ("e.g.", "eg"),
        ("a.5", "a.5"),  # the upstream "(?!<=\d)" is a lookahead: only the next char matters
    ],
)
def test_process_punctuation(text, out):
    assert process_punctuation(text) == out


def test_period_strip_removes_at_most_32_periods():
    # upstream passes re.UNICODE (== 32) as sub()'s count argument: 40 periods -> 8 stay
    assert process_punctuation("." * 40) == "." * 8


@pytest.mark.parametrize(
    "text, out",
    [
        ("Two dogs", "2 dogs"),  # number words zero..ten -> digits
        ("none", "0"),  # manualMap maps "none" to "0"
        ("eleven", "eleven"),  # only up to ten
        ("The Cat", "cat"),  # lowercase, articles a/an/the dropped
        ("a an the", ""),
        ("dont", "don't"),  # contractions table
        ("Im", "im"),  # upstream key "Im" has a capital, never matches lower-cased text
        ("somebody'd", "somebodyd"),  # upstream's table maps it so
        ("  many   spaces ", "many spaces"),
    ],
)
def test_process_digit_article(text, out):
    assert process_digit_article(text) == out


@pytest.mark.parametrize(
    "text, out",
    [
        (" Two dogs. ", "2 dogs"),
        ("1,000", "1000"),
        ("ten-year", "10 year"),  # '-' -> ' ', then "ten" -> "10"
        ("Yes!", "yes"),
        ("the red, white and blue", "red white and blue"),
        ("$5.00", "$5.00"),
    ],
)
def test_normalize_answer(text, out):
    assert normalize_answer(text) == out
