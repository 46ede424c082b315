"""Random completions and ground truths for reward parity tests: mixtures of the pieces the published
reward reacts to (think tags and their fragments, boxes, cited 4-number brackets, numbers near 512, pipes,
braces, words and all kinds of whitespace)."""

from __future__ import annotations

import random
import re

WORDS = (
    "the",
    "lung",
    "lungs",
    "opacity",
    "opacities",
    "effusion",
    "pleural",
    "no",
    "Yes",
    "yes",
    "left",
    "lower",
    "lobe",
    "cardiomegaly",
    "is",
    "seen",
    "clear",
    "None",
    "atelectasis",
    "right",
    "and",
)
NUMBERS = (
    "0",
    "7",
    "12",
    "-3",
    "+7.25",
    ".5",
    "-.5",
    "512",
    "512.0",
    "513",
    "511.999",
    "512.0000001",
    "1e3",
    "5.",
    "0512",
    "000513",
    "1.2.3",
    "99999",
    "-600",
    "+600",
    "3.14159",
    "1000000000000",
)
TAG_PIECES = (
    "<think>",
    "</think>",
    "<think",
    "think>",
    "</",
    "<",
    ">",
    "/",
    "< think >",
    "</ think>",
    "<  /think  >",
    "\\boxed{",
    "\\boxed",
    "boxed{",
    "{",
    "}",
    "[",
    "]",
    ",",
    ", ",
    "|",
    " | ",
)
SPACES = (" ", "  ", "\n", "\t", " \n\t ", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f")
UNICODE_PIECES = ("é", "\u00a0", "\u2003", "\u0663", "\u00b2", "\x85", "肺")  # NBSP, em space, Arabic 3, ², NEL


def _number(rng: random.Random, strict: bool = False) -> str:
    if rng.random() < 0.6:
        choices = [x for x in NUMBERS if re.fullmatch(r"[-+]?\d*\.?\d+", x)] if strict else NUMBERS
        return rng.choice(choices)
    return str(rng.choice([rng.randint(-50, 700), round(rng.uniform(-10, 600), rng.randint(0, 3))]))


def cited_box(rng: random.Random, strict: bool = False) -> str:
    """A bracketed number list; strict ones always match the published 4-number regex."""
    n = 4 if strict else rng.choice([4, 4, 4, 4, 3, 5])
    seps = [rng.choice([",", ", ", ",  ", ",\n", ",\t"] + ([] if strict else [" ,"])) for _ in range(n - 1)]
    body = _number(rng, strict) + "".join(s + _number(rng, strict) for s in seps)
    brackets = [("[", "]")] if strict else [("[", "]"), ("[", "]"), ("[ ", "]"), ("[", " ]"), ("(", ")"), ("[[", "]]")]
    left, right = rng.choice(brackets)
    return left + body + right


def _piece(rng: random.Random, unicode: bool) -> str:
    r = rng.random()
    if r < 0.25:
        return rng.choice(TAG_PIECES)
    if r < 0.4:
        return rng.choice(SPACES)
    if r < 0.55:
        return cited_box(rng)
    if r < 0.65:
        return _number(rng)
    if r < 0.72:
        return "\\boxed{" + " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 3))) + rng.choice(["}", "}", ""])
    if unicode and r < 0.77:
        return rng.choice(UNICODE_PIECES)
    return rng.choice(WORDS)


def completion(rng: random.Random, unicode: bool = False, max_pieces: int = 30) -> str:
    """A random completion; about a third follow the target layout with noise inserted."""
    noise = lambda k: "".join(_piece(rng, unicode) for _ in range(rng.randint(0, k)))
    if rng.random() < 0.35:
        answer = rng.choice(
            [
                " | ".join(rng.sample(WORDS, rng.randint(1, 4))),
                rng.choice(WORDS),
                " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))),
            ]
        )
        return (
            rng.choice(["", " ", "\n"])
            + "<think>"
            + noise(8)
            + cited_box(rng)
            + noise(6)
            + "</think>"
            + noise(4)
            + "The answer is: \\boxed{"
            + answer
            + "}"
            + noise(3)
        )
    return noise(max_pieces)


def ground_truth(rng: random.Random) -> str:
    """A list ("a|b"), short (<= 2 words) or long ground truth, sometimes with odd spacing."""
    r = rng.random()
    if r < 0.3:
        items = [rng.choice(WORDS) for _ in range(rng.randint(1, 5))]  # duplicates on purpose
        return rng.choice(["|", " | ", "|  "]).join(items)
    if r < 0.55:
        return rng.choice([" ", ""]) + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 2)))
    if r < 0.6:
        return "a|" + " ".join(rng.choice(WORDS) for _ in range(25))  # '|' but > 20 words: long
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))
