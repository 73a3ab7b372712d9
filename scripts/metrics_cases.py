"""Cases for scripts/check_metrics_reference.py: half drawn from POOL and its near-misses
(adversarial: Unicode, whitespace, empty strings, numbers with units, percentages, negative and
zero targets), half random strings and numbers; seeded, so a run is repeatable."""

from __future__ import annotations

import random

POOL = [
    'yes', 'no', 'Yes', 'YES', 'yes.', 'Yes!', 'red', 'Red car', 'red car', 'the cat', 'a dog', 'an apple', 'two',
    '2', 'Two', 'none', '1,000', '1000', '1,,000', '3.5', '3.', '3.50', 't-shirt', 'tshirt', "don't", 'dont',
    "it's", "dog's", 'Dear Dr. Lobo', 'Dear Dr Lobo', '1/8/93', '1/8/1993', '12.5%', '12.5', '0.125', '12.6', '-5',
    '-5.2', '-4.9', '0', '0.0', '-0', '0%', '$5', '5 kg', '5kg', '10%', '10 %', '10%%', '0.1', '1e3', '1E3', 'nan',
    'NaN', 'inf', '-inf', '1_000', ' 12 ', '12', '12\n', 'Ünïcödé', 'ünïcödé', 'İstanbul', 'istanbul', 'straße',
    'STRASSE', 'ﬁne', 'fine', '猫', '٣', '٣.٥', '3', 'x\xa0y', 'x y', '\t\n', '', ' ', '?', '!!', '(2)', 'c++',
    'one,two', 'one, two', 'a.b', '...', 'left side', 'Left-side', 'unanswerable', 'Unanswerable', 'ten', '10',
    'e.g.', 'U.S.A.', 'usa', '9:30', '930', 'ß', 'SS', 'i̇', 'yes\x00', '😀',
]  # fmt: skip
ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?%-/()'\"$\t\nßİéü猫٣😀\u00a0"


def _noise(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(n))


def _mutate(rng: random.Random, text: str) -> str:
    """A near-miss of ``text``: case, whitespace, punctuation or one-character edits."""
    for _ in range(rng.randint(0, 3)):
        op = rng.randrange(7)
        i = rng.randint(0, len(text))
        if op == 0:
            text = text.upper()
        elif op == 1:
            text = text.capitalize()
        elif op == 2:
            text = rng.choice([" ", "  ", "\t", "\n", ""]) + text + rng.choice([" ", ".", "!", "?", "%", ""])
        elif op == 3 and text:
            text = text[: i - 1] + text[i:]
        elif op == 4:
            text = text[:i] + rng.choice(ALPHABET) + text[i:]
        elif op == 5:
            text = text.replace(" ", rng.choice(["  ", "-", ", ", ""]))
        else:
            text = rng.choice(POOL)
    return text


def _number(rng: random.Random) -> str:
    value = rng.choice([0, 0.0, -1, 1, 100, 12.5, -3.75, 1e-9, 1e12, rng.uniform(-1000, 1000)])
    text = rng.choice([f"{value}", f"{value:.2f}", f"{value:g}", f"{int(value)}"])
    return text + rng.choice(["", "", "%", " %", " kg", "%%"])


def _text(rng: random.Random, adversarial: bool) -> str:
    if adversarial:
        return _mutate(rng, rng.choice(POOL))
    return _noise(rng, rng.randint(0, 12)) if rng.random() < 0.5 else _number(rng)


def make_cases(rng: random.Random, n: int, answers: tuple[int, int]) -> list[tuple[str, list[str]]]:
    """``n`` (prediction, answers) cases, the prediction often a near-miss of one of the answers."""
    cases = []
    for i in range(n):
        adversarial = i % 2 == 0
        gts = [_text(rng, adversarial) for _ in range(rng.randint(*answers))]
        if gts and rng.random() < 0.6:
            pred = _mutate(rng, rng.choice(gts))
        else:
            pred = _text(rng, adversarial)
        cases.append((pred, gts))
    return cases


def make_vqa_cases(rng: random.Random, n: int) -> list[tuple[str, list[str]]]:
    """VQA-shaped cases: mostly ten answers drawn from a few forms, so that agreement varies."""
    cases = []
    for i in range(n):
        forms = [_text(rng, i % 2 == 0) for _ in range(rng.randint(1, 4))]
        size = 10 if rng.random() < 0.8 else rng.randint(2, 9)
        gts = [_mutate(rng, rng.choice(forms)) if rng.random() < 0.3 else rng.choice(forms) for _ in range(size)]
        pred = _mutate(rng, rng.choice(forms)) if rng.random() < 0.7 else _text(rng, i % 2 == 0)
        cases.append((pred, gts))
    return cases


def make_choice_cases(rng: random.Random, n: int) -> list[tuple[str, list[str], list[str], int]]:
    """(prediction, our answers [letter, text], the four choices, the correct index)."""
    cases = []
    for i in range(n):
        choices = [_text(rng, i % 2 == 0) or "x" for _ in range(4)]
        idx = rng.randrange(4)
        letter = "ABCD"[idx]
        kind = rng.randrange(5)
        if kind == 0:
            pred = rng.choice(choices)
        elif kind == 1:
            pred = _mutate(rng, choices[idx])
        elif kind == 2:
            pred = rng.choice(["", "(", "", ". "]) + rng.choice("ABCDabcd") + rng.choice(["", ".", ")", ":"])
        elif kind == 3:
            pred = f"{rng.choice('ABCD')}. {rng.choice(choices)}"
        else:
            pred = _text(rng, i % 2 == 0)
        cases.append((pred, [letter, choices[idx]], choices, idx))
    return cases
