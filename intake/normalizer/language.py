"""The one language model the normalizers share: fastText's language identification model, loaded once per process.

``lid.176.ftz`` (176 languages, 0.9 MiB, shipped beside this module; see
``models/NOTICE.md``) read by the fasttext-predict wheel, fastText's own C++
inference without its training code or numpy. A guess costs about 25 us for
a complaint of a few hundred characters (it reads the first 150 characters,
and the rest of the 300-character sample only when unsure of those), and the
model about 2 MiB per process; py3langid, used before, took 90 us and 110 MiB.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from importlib.resources import files
from typing import Any

from intake.normalizer.reference import REFERENCE_IN_TEXT

_loaded: list["Model"] = []
# Mail is parsed in worker threads: without the lock, a burst of first messages would load the model once per thread.
_lock = threading.Lock()

_PREFIX = "__label__"


class Model:
    """``classify`` and ``rank`` over fastText's labels, as ISO 639 codes (``en``, ``zh``, ``wuu``)."""

    def __init__(self, fasttext_model: Any) -> None:
        self._model = fasttext_model

    def rank(self, text: str) -> list[tuple[str, float]]:
        """The likeliest languages, first the likeliest; ``[("und", 0.0)]`` when the model gives none a chance."""
        # The ten likeliest: what lies beyond holds a few thousandths of the probability, and listing all 176 costs
        # a quarter more time.
        return self._predict(text, 10) or [("und", 0.0)]

    def classify(self, text: str) -> tuple[str, float]:
        """The likeliest language and its probability."""
        return (self._predict(text, 1) or [("und", 0.0)])[0]

    def _predict(self, text: str, k: int) -> list[tuple[str, float]]:
        # The first sentence or two first: most texts are told from them at half the cost (the time grows with every
        # character). Only when the model is unsure of those does it read the whole sample.
        if len(text) > FIRST_CHARS:
            first = self._read(text[:FIRST_CHARS], k)
            if first and first[0][1] >= SURE:
                return first
        return self._read(text, k)

    def _read(self, text: str, k: int) -> list[tuple[str, float]]:
        try:
            labels, probabilities = self._model.predict(_one_line(text), k=k, threshold=0.0)
        except (TypeError, ValueError, RuntimeError):  # a guess is never worth a complaint: no guess
            return []
        return [(label.removeprefix(_PREFIX), min(1.0, float(p))) for label, p in zip(labels, probabilities, strict=True)]


def _one_line(text: str) -> str:
    """What the model reads: one line of UTF-8 (it refuses a line break and a lone surrogate), NFC, and lower case
    when all in capitals (it was trained on ordinary text, and "MY PARCEL NEVER CAME" would be a coin toss)."""
    text = " ".join(unicodedata.normalize("NFC", text).split())
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (half an emoji cut by a sender): the model takes UTF-8 only
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.lower() if text.isupper() else text


def model() -> Model:
    """The model, loaded on first use: the CLI and the config import the normalizers without needing it."""
    if not _loaded:
        with _lock:
            if not _loaded:
                import fasttext

                path = files("intake.normalizer").joinpath("models", "lid.176.ftz")
                _loaded.append(Model(fasttext.load_model(str(path))))
    return _loaded[0]


# Below this many letters a guess is a coin toss ("ok", "merci", an order number).
_MIN_LETTERS = 12
# The start of a text says its language: fastText's accuracy no longer grows past a sentence or two, while the time
# grows with every character (about 10 us per 100). On the catalogs' sentences cut to 100 characters it was right for
# 877 of 1 025 (as a channel decides: 0.8 confidence), cut to 500 for 879, and wrong for none. Every channel guesses
# from this much.
SAMPLE_CHARS = 300
# What is read first, and how sure the model must be of it to read no further.
FIRST_CHARS = 150
SURE = 0.9


def has_letters(sample: str, count: int) -> bool:
    """Whether ``sample`` has at least ``count`` letters; stops counting there (a long text is not walked to its end)."""
    letters = 0
    for char in sample:
        if char.isalpha():
            letters += 1
            if letters >= count:
                return True
    return count <= 0


# Codes are in no language: a reference ("C-7K3M-9QXA"), an order, tracking or phone number, a link, an address. Their
# letters were counted and read as words: "status C-ZZE3-TF67" was English or Chinese for one reference in eight, and a
# stranger asking so was answered in it, not in their number's language. A run of printable ASCII with a digit, "://"
# or "@" in it is one, and so is a reference with none (ASCII only: a Chinese sentence around an order number has no
# spaces to end it). About 6 us on a sample that has a digit; the first search spares that to the rest.
_MAYBE_CODE = re.compile(r"[0-9@]|://|[Cc]-")
_CODE = re.compile(rf"(?<![!-~])[!-~]*?(?:[0-9@]|://|{REFERENCE_IN_TEXT})[!-~]*")


def sample(text: str, min_letters: int = _MIN_LETTERS) -> str | None:
    """What the model reads of ``text``: its start without codes, or None when that has too few letters for a guess."""
    head = text[:SAMPLE_CHARS]
    if _MAYBE_CODE.search(head):
        head = _CODE.sub(" ", head)
    return head if has_letters(head, min_letters) else None


def detect(text: str, *, confidence: float = 0.8) -> str | None:
    """The text's language (ISO 639-1 where it has one) when the model is confident of it, else None."""
    head = sample(text)
    if head is None:
        return None
    best, probability = model().classify(head)
    return best if probability >= confidence else None
