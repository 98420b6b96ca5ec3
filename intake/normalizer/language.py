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
# The start of a text says its language: the model's accuracy no longer grows past a few hundred characters, while
# its time grows with every one (about 150 us for 1 600 characters, 80 for 800). Every channel guesses from this much.
SAMPLE_CHARS = 800


def has_letters(sample: str, count: int) -> bool:
    """Whether ``sample`` has at least ``count`` letters; stops counting there (a long text is not walked to its end)."""
    letters = 0
    for char in sample:
        if char.isalpha():
            letters += 1
            if letters >= count:
                return True
    return count <= 0


def sample(text: str, min_letters: int = _MIN_LETTERS) -> str | None:
    """What the model reads of ``text``: its start, or None when that has too few letters for a guess."""
    head = text[:SAMPLE_CHARS]
    return head if has_letters(head, min_letters) else None


def detect(text: str, *, confidence: float = 0.8) -> str | None:
    """The text's language (ISO 639-1) when the model is confident of it, else None."""
    head = sample(text)
    if head is None:
        return None
    best, probability = model().classify(head)
    return best if probability >= confidence else None
