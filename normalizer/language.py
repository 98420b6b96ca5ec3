"""The one language model the normalizers share: py3langid's naive Bayes model, loaded once per process.

About 120 MiB once loaded; the email and Twilio channels would each hold a
copy if they loaded their own.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from py3langid.langid import LanguageIdentifier


@lru_cache(maxsize=1)
def model() -> "LanguageIdentifier":
    # Loaded on first use (numpy and the model take about half a second): the
    # CLI and the config import the normalizers without needing it.
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
