"""Locale negotiation and gettext catalogs (domain ``intake``) for customer-facing text."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import Literal

from babel import Locale, UnknownLocaleError
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

__all__ = [
    "DEFAULT_LOCALE",
    "SUPPORTED",
    "language_name",
    "negotiate",
    "text_direction",
    "translations",
]

DEFAULT_LOCALE = "en"

_DOMAIN = "intake"
_LOCALE_DIR = Path(__file__).resolve().parent / "locale"

# Caps on what a client can make us parse: Accept-Language is attacker-controlled
# and browsers never send more than a handful of entries.
_MAX_HEADER_CHARS = 4096
_MAX_ENTRIES = 64

# BCP 47-ish: a primary language subtag, then subtags of letters/digits.
# POSIX codesets and modifiers (pl_PL.UTF-8@euro) are stripped before this check.
_TAG = re.compile(r"[a-z]{2,8}(?:-[a-z0-9]{1,8})*")


def _discover() -> tuple[str, ...]:
    # The .po files are the single source of truth, so the folder decides what we
    # support: adding a language is adding a catalog, nothing else.
    if not _LOCALE_DIR.is_dir():
        return (DEFAULT_LOCALE,)
    found = sorted(
        entry.name
        for entry in _LOCALE_DIR.iterdir()
        if (entry / "LC_MESSAGES" / f"{_DOMAIN}.po").is_file()
    )
    return tuple(found) or (DEFAULT_LOCALE,)


SUPPORTED: tuple[str, ...] = _discover()

# Lower-case, hyphenated spelling -> folder name, for case- and separator-blind lookup.
_BY_TAG: dict[str, str] = {name.lower().replace("_", "-"): name for name in SUPPORTED}


def negotiate(
    preferred: str | Iterable[str] | None,
    default: str = DEFAULT_LOCALE,
) -> str:
    """Return the best SUPPORTED locale for what the customer prefers, else ``default``.

    ``preferred`` may be one code (``pl``, ``pl-PL``, ``pl_PL``, ``zh-Hans-CN``), an
    iterable of codes in preference order, or a raw ``Accept-Language`` value with
    q-weights. Never raises: whatever a channel hands us, the customer gets an answer.
    """
    try:
        candidates = _candidates(preferred)
        # q=0 means "not acceptable": it matters only to "*", which sorts before it.
        excluded = {_lookup(tag) for tag, quality in candidates if quality <= 0}
        for tag, quality in candidates:
            if quality <= 0:
                continue
            if tag == "*":
                # "Anything goes": our default, unless the client ruled it out.
                if default not in excluded:
                    return default
                rest = [name for name in SUPPORTED if name not in excluded]
                return rest[0] if rest else default
            found = _lookup(tag)
            if found is not None:
                return found
    except Exception:  # noqa: BLE001 - garbage in must still give an answer
        pass
    return default


def _candidates(preferred: object) -> list[tuple[str, float]]:
    """Normalised (tag, q) pairs, best first; q=0 entries are kept so ``*`` can honour them."""
    if preferred is None:
        return []
    if isinstance(preferred, (bytes, bytearray)):
        # Raw header bytes off the wire; latin-1 never fails to decode.
        preferred = bytes(preferred).decode("latin-1")
    if isinstance(preferred, str):
        return _parse_accept_language(preferred)
    pairs: list[tuple[str, float]] = []
    for count, item in enumerate(preferred):  # type: ignore[attr-defined]
        if count >= _MAX_ENTRIES:
            break
        if isinstance(item, str):
            # An item may itself carry ";q=", so treat each like a small header;
            # the iterable's own order wins over q-values across items.
            pairs.extend(_parse_accept_language(item))
    return pairs


def _parse_accept_language(value: str) -> list[tuple[str, float]]:
    entries: list[tuple[str, float]] = []
    for part in value[:_MAX_HEADER_CHARS].split(",")[:_MAX_ENTRIES]:
        tag, _, params = part.partition(";")
        tag = _normalise(tag)
        if tag is None:
            continue
        entries.append((tag, _quality(params)))
    # Stable sort: equal weights keep the client's order (RFC 9110 §12.5.4).
    entries.sort(key=lambda entry: -entry[1])
    return entries


def _quality(params: str) -> float:
    for param in params.split(";"):
        name, _, raw = param.partition("=")
        if name.strip().lower() != "q":
            continue
        try:
            quality = float(raw.strip())
        except ValueError:
            # A malformed weight is the client's bug; it still named the language.
            return 1.0
        if quality != quality:  # NaN
            return 1.0
        return min(max(quality, 0.0), 1.0)
    return 1.0


def _normalise(raw: str) -> str | None:
    tag = raw.strip()
    if tag == "*":
        return tag
    # POSIX spellings from LANG-like values: pl_PL.UTF-8@euro -> pl-pl
    tag = tag.split(".", 1)[0].split("@", 1)[0].replace("_", "-").lower()
    return tag if _TAG.fullmatch(tag) else None


def _lookup(tag: str) -> str | None:
    # RFC 4647 lookup: drop subtags from the right until something matches, so
    # zh-Hant-TW tries zh-hant-tw, zh-hant, then zh.
    subtags = tag.split("-")
    while subtags:
        found = _BY_TAG.get("-".join(subtags))
        if found is not None:
            return found
        subtags.pop()
    return None


def translations(locale: str | None) -> Translations:
    """The gettext catalog for ``locale`` (negotiated); English for anything unsupported."""
    return _load(negotiate(locale))


@lru_cache(maxsize=64)
def _load(locale: str) -> Translations:
    path = _LOCALE_DIR / locale / "LC_MESSAGES" / f"{_DOMAIN}.po"
    try:
        with path.open("rb") as fp:
            catalog = read_po(fp, locale=locale, domain=_DOMAIN)
    except (OSError, ValueError, UnknownLocaleError):
        # An empty catalog answers with the msgids, which are English.
        return Translations(domain=_DOMAIN)
    # Compile in memory so the .po stays the only artefact: no .mo to go stale.
    buffer = BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    buffer.seek(0)
    return Translations(buffer, domain=_DOMAIN)


def _babel_locale(locale: str | None) -> Locale | None:
    tag = _normalise(locale) if isinstance(locale, str) else None
    if tag is None or tag == "*":
        return None
    try:
        return Locale.parse(tag, sep="-")
    except (ValueError, TypeError, UnknownLocaleError):
        return None


def text_direction(locale: str | None) -> Literal["ltr", "rtl"]:
    """``"rtl"`` for right-to-left scripts (fa, ar, …), else ``"ltr"``."""
    parsed = _babel_locale(locale)
    if parsed is None:
        return "ltr"
    return "rtl" if parsed.character_order == "right-to-left" else "ltr"


def language_name(locale: str | None) -> str:
    """The language's name for itself ("فارسی", "polski", "中文"), for a language switch."""
    parsed = _babel_locale(locale)
    if parsed is None:
        return str(locale or "")
    return parsed.get_display_name(parsed) or str(locale)
