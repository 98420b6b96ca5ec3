"""The one language model the normalizers share: py3langid's naive Bayes model, loaded once per process.

About 110 MiB once loaded; the email and Twilio channels would each hold a
copy if they loaded their own.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from py3langid.langid import LanguageIdentifier

_loaded: list["LanguageIdentifier"] = []
# Mail is parsed in worker threads: without the lock, a burst of first messages
# would load the model once per thread at the same time (seen: 480 MiB peak).
_lock = threading.Lock()


def model() -> "LanguageIdentifier":
    """The model, loaded on first use: the CLI and the config import the normalizers without needing it."""
    if not _loaded:
        with _lock:
            if not _loaded:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                _loaded.append(LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True))
    return _loaded[0]


# Below this many letters a guess is a coin toss ("ok", "merci", an order number).
_MIN_LETTERS = 12
# The start of a long text says its language; the model's time grows with the text.
_SAMPLE = 2000


def _enough_letters(sample: str) -> bool:
    # Stops at the twelfth letter: counting every letter of a long text cost a third of the guess.
    letters = 0
    for char in sample:
        if char.isalpha():
            letters += 1
            if letters >= _MIN_LETTERS:
                return True
    return False


def detect(text: str, *, confidence: float = 0.8) -> str | None:
    """The text's language (ISO 639-1) when the model is confident of it, else None."""
    sample = text[:_SAMPLE]
    if not _enough_letters(sample):
        return None
    best, probability = model().classify(sample)
    return best if probability >= confidence else None
