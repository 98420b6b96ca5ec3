"""Bytes to text whatever the label says: charset aliases, mislabelled and undeclared 8-bit text."""

from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from charset_normalizer import from_bytes as detect_charset

from intake.normalizer.language import model as language_model

# Labels that mail clients write and what actually decodes them. Supersets
# first: a mailer that says gb2312 often sends GBK (a superset), Outlook writes
# ks_c_5601-1987 for Windows' Korean code page, and iso-8859-1 text from Windows
# carries cp1252's curly quotes (the WHATWG Encoding Standard maps them so too).
_CHARSET_ALIASES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("gb2312", "gb_2312-80", "gb_2312", "csgb2312", "euc-cn", "x-euc-cn", "gbk", "x-gbk", "cp936", "windows-936", "chinese"),
        ("gb18030",),
    ),
    **dict.fromkeys(
        ("ks_c_5601-1987", "ks_c_5601-1989", "ks_c_5601", "ksc5601", "csksc56011987", "euc-kr", "korean", "windows-949"),
        ("cp949",),
    ),
    **dict.fromkeys(
        ("iso-8859-1", "iso8859-1", "iso_8859-1", "latin1", "latin-1", "l1", "us-ascii", "ascii", "ansi_x3.4-1968", "cp819"),
        ("cp1252", "latin-1"),
    ),
    **dict.fromkeys(("windows-1252", "cp1252", "x-cp1252"), ("cp1252", "latin-1")),
    **dict.fromkeys(("iso-8859-9", "latin5"), ("cp1254", "iso-8859-9")),
    **dict.fromkeys(("iso-8859-11", "tis-620", "windows-874"), ("cp874",)),
    # Windows and Japanese mailers mark NEC/IBM extensions (①, ㈱, half-width kana)
    # with the plain labels; the extended codecs read them.
    **dict.fromkeys(("iso-2022-jp", "csiso2022jp"), ("iso2022_jp", "iso2022_jp_ext", "x-cp50220")),
    **dict.fromkeys(
        ("shift_jis", "shift-jis", "sjis", "x-sjis", "ms_kanji", "windows-31j", "csshiftjis"), ("cp932", "shift_jis_2004")
    ),
    **dict.fromkeys(("euc-jp", "x-euc-jp", "cseucpkdfmtjapanese"), ("euc_jp", "euc_jis_2004", "cp932")),
    **dict.fromkeys(("big5", "x-big5", "csbig5", "big5-hkscs"), ("big5hkscs", "cp950")),
    **dict.fromkeys(("x-mac-ce", "x-mac-centraleurroman"), ("mac-latin2",)),
    **dict.fromkeys(("x-mac-cyrillic", "x-mac-ukrainian"), ("mac-cyrillic",)),
    **dict.fromkeys(("macintosh", "x-mac-roman", "mac"), ("mac-roman",)),
    **dict.fromkeys(("utf8", "unicode-1-1-utf-8", "x-unicode20utf8", "utf-8"), ("utf-8",)),
    **dict.fromkeys(("unicode-1-1-utf-7", "x-unicode20utf7", "utf-7"), ("utf-7",)),
    "iso-8859-8-i": ("iso-8859-8",),
}
# Windows' ISO-2022-JP (code page 50220): JIS X 0208 plus NEC's and IBM's extensions
# (①, ㈱, Ⅱ), which Python's iso2022 codecs refuse. Read by way of cp932, which has them.
_CP50220 = "x-cp50220"
# Labels that say nothing about the bytes.
_UNDECLARED = frozenset({"", "unknown-8bit", "x-unknown", "unknown", "8bit", "default", "x-user-defined", "none", "charset"})
# Python codecs that are text encodings in name only: never run them on a stranger's label.
# Compared with codecs.lookup()'s own spelling of the name, which has hyphens: "unicode-escape".
_REFUSED_CODECS = frozenset({"unicode-escape", "raw-unicode-escape", "idna", "punycode", "undefined"})
# Single-byte Latin labels are often put on UTF-8 text by misconfigured mailers;
# real Latin-1 text is practically never valid multi-byte UTF-8.
_MISLABEL_PRONE = re.compile(r"^(us-ascii|ascii|iso-?8859-\d+|iso_8859-\d+|latin-?\d|windows-125\d|cp125\d)$")


@lru_cache(maxsize=256)
def codecs_for(label: str | None) -> tuple[str, ...]:
    """Python codecs to try, in order, for a charset label from a message; () when it tells nothing usable."""
    if label is None:
        return ()
    name = label.strip().strip("\"'").lower().split("*", 1)[0]
    if name in _UNDECLARED:
        return ()
    if name in _CHARSET_ALIASES:
        return _CHARSET_ALIASES[name]
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return ()
    if not getattr(info, "_is_text_encoding", True) or info.name in _REFUSED_CODECS:
        return ()
    return (info.name,)


def decode(data: bytes, declared: str | None, hint: str | None = None, *, detect: bool = True) -> str:
    """Bytes to text: the declared charset when it fits, else a guess; never raises, never gives up."""
    candidates = codecs_for(declared)
    if candidates and not data.isascii() and _MISLABEL_PRONE.match((declared or "").strip().lower()):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            nearly = _nearly_utf8(data)
            if nearly is not None:
                return nearly  # UTF-8 with a damaged byte, under a Latin label
            # else it really is the single-byte charset it says
    for name in candidates:
        if name == _CP50220:
            return _decode_cp50220(data)
        try:
            return data.decode(name)
        except (UnicodeDecodeError, LookupError):
            continue
    return _guess(data, hint, detect=detect)


def _decode_cp50220(data: bytes) -> str:
    """ISO-2022-JP with Windows extensions: each JIS X 0208 pair is moved to its Shift_JIS place and read as cp932."""
    out = bytearray()
    mode = "ascii"
    index = 0
    while index < len(data):
        byte = data[index]
        if byte == 0x1B:
            sequence = data[index + 1 : index + 3]
            if sequence in (b"$B", b"$@"):
                mode, index = "jis", index + 3
                continue
            if sequence in (b"(B", b"(J"):
                mode, index = "ascii", index + 3
                continue
            if sequence == b"(I":
                mode, index = "kana", index + 3
                continue
        if byte == 0x0E:  # SO: half-width katakana (code page 50221)
            mode, index = "kana", index + 1
            continue
        if byte == 0x0F:  # SI
            mode, index = "ascii", index + 1
            continue
        if mode == "jis" and 0x21 <= byte <= 0x7E and index + 1 < len(data) and 0x21 <= data[index + 1] <= 0x7E:
            first, second = byte, data[index + 1]
            lead = ((first - 0x21) >> 1) + 0x81
            lead += 0x40 if lead > 0x9F else 0
            trail = second + (0x1F + (second >= 0x60) if first % 2 else 0x7E)
            out += bytes((lead, trail))
            index += 2
            continue
        if mode == "kana" and 0x21 <= byte <= 0x5F:
            out.append(byte + 0x80)
        else:
            out.append(byte)
        index += 1
    return out.decode("cp932", errors="replace")


def _guess(data: bytes, hint: str | None, *, detect: bool) -> str:
    """Decode bytes whose charset is unknown or wrong.

    ``hint`` (the message's first declared charset) is one candidate among the
    usual ones, scored like them, and wins only where it reads as well as any:
    mailers that declare one charset for the body write raw 8-bit headers in
    another (GB2312 or Shift_JIS subjects in a Latin-1 mail). ``detect`` lets
    the statistical detector in, for texts long enough for it.
    """
    if data.isascii():
        if b"\x1b$" in data or b"\x1b(" in data:
            # Undeclared ISO-2022-JP: 7-bit escapes, common from Japanese mailers.
            return decode(data, "iso-2022-jp")
        return data.decode("ascii")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    nearly = _nearly_utf8(data)
    if nearly is not None:
        return nearly
    preferred = tuple(name for name in codecs_for(hint) if name not in ("utf-8", _CP50220))
    found = _detect(data, preferred, statistical=detect)
    if found is not None:
        return found
    return data.decode("cp1252", errors="replace")


# At most one undecodable sequence per this many well-formed multi-byte characters still reads as UTF-8.
_UTF8_ERRORS_PER_CHARACTER = 10
_UTF8_MIN_CHARACTERS = 3


def _nearly_utf8(data: bytes) -> str | None:
    """UTF-8 with a few bytes that are not (a character cut by a mailer, a byte damaged on the way), else None.

    Such text read as UTF-8 with a replacement character or two is the text;
    read with a code page that takes every byte, it is all garbled. Real
    single-byte text is never this close to UTF-8: each of its accented letters
    is an error, and it has practically no well-formed sequences.
    """
    text = data.decode("utf-8", errors="replace")
    errors = text.count("\ufffd") - data.count("\ufffd".encode())
    characters = sum(1 for char in text if ord(char) > 127) - text.count("\ufffd")
    if characters >= _UTF8_MIN_CHARACTERS and errors * _UTF8_ERRORS_PER_CHARACTER <= characters:
        return text
    return None


# The charsets that undeclared 8-bit mail really arrives in, most likely first.
_UNDECLARED_CANDIDATES = (
    "cp1252", "cp1250", "iso8859_2", "cp1251", "koi8_r", "gb18030", "big5hkscs", "cp932", "euc_jp", "cp949",
    "cp1254", "cp1253", "cp1257", "cp1255", "cp1256",
)  # fmt: skip
# Which charsets a language is written in, so that a tie goes to the native one
# (GB18030 also decodes EUC-JP kana, cp1252 also decodes cp1250 Czech as letters).
_NATIVE_CHARSETS = {
    **dict.fromkeys(("pl", "cs", "sk", "hu", "hr", "sl", "ro", "bs", "sr"), ("cp1250", "iso8859_2")),
    **dict.fromkeys(("ru", "uk", "be", "bg", "mk"), ("cp1251", "koi8_r")),
    "ja": ("cp932", "euc_jp"), "zh": ("gb18030", "big5hkscs"), "ko": ("cp949",), "tr": ("cp1254",), "el": ("cp1253",),
    **dict.fromkeys(("lt", "lv", "et"), ("cp1257",)),
}  # fmt: skip
# Non-ASCII letters of languages written in Latin script: a decoding that puts
# "ì" and "ø" into Czech words is the wrong one.
_ALPHABETS = {
    "cs": "áčďéěíňóřšťúůýž", "sk": "áäčďéíĺľňóôŕšťúýž", "pl": "ąćęłńóśźż", "hu": "áéíóöőúüű", "hr": "čćđšž",
    "sl": "čšž", "ro": "ăâîșțşţ", "de": "äöüß", "fr": "àâæçéèêëîïôœùûüÿ", "es": "áéíñóúü", "pt": "áâãàçéêíóôõú",
    "it": "àèéìíîòóùú", "nl": "éëïóöüè", "tr": "çğıöşüâîû", "sv": "åäöé", "da": "æøåé", "no": "æøåé", "fi": "äöå",
    "lt": "ąčęėįšųūž", "lv": "āčēģīķļņšūž", "et": "äöõüšž", "ca": "àçèéíïòóúü",
}  # fmt: skip
# Scripts that share words: kanji with kana. Hangul stays apart: Korean words are not mixed with Hanja.
_EAST_ASIAN_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "HALFWIDTH", "FULLWIDTH", "IDEOGRAPHIC")


def _detect(data: bytes, preferred: tuple[str, ...] = (), *, statistical: bool = True) -> str | None:
    """The likeliest reading of undeclared 8-bit text.

    Statistical charset detectors (charset-normalizer included) misjudge short
    Latin-script texts (cp1257 for French, cp1252 for Czech). Each candidate
    reading is scored instead: symbols and script mixtures inside words, words
    made only of accented letters, letters outside the detected language's
    alphabet; the language model breaks ties. ``preferred`` charsets (the
    message's own) go first and win a tie. charset-normalizer's pick joins the
    candidates, for charsets outside the usual ones, when ``statistical``.
    """
    scored: list[_Reading] = []

    def score(order: int, charset: str) -> None:
        try:
            text = data.decode(charset)
        except (UnicodeDecodeError, LookupError):
            return
        sample = text[:4000]
        language, confidence = language_model().classify(sample)
        scored.append(_Reading(round(_implausibility(sample, language), 2), order, confidence, charset, language, text))

    for order, name in enumerate(preferred, start=-len(preferred)):
        score(order, name)
    for order, name in enumerate(name for name in _UNDECLARED_CANDIDATES if name not in preferred):
        score(order, name)
    if statistical and (not scored or min(reading.implausibility for reading in scored) > 0.1):
        # None of the usual charsets reads well: ask the statistical detector.
        best = detect_charset(data[:65536]).best()
        found = best.encoding if best is not None and best.encoding else None
        # It sees UTF-16 in text without a single NUL byte: never what mail carries.
        if found and found not in _UNDECLARED_CANDIDATES and not (found.startswith(("utf_16", "utf_32")) and b"\x00" not in data):
            score(len(_UNDECLARED_CANDIDATES), found)
    if not scored:
        return None
    least = min(reading.implausibility for reading in scored)
    tied = sorted((reading for reading in scored if reading.implausibility <= least + 0.02), key=lambda reading: reading.order)
    if tied[0].order < 0:
        return tied[0].text  # the message's own charset reads as well as any
    top = max(reading.confidence for reading in tied)
    confident = sorted((reading for reading in tied if reading.confidence >= top - 0.15), key=lambda reading: reading.order)
    for reading in confident:
        if reading.charset in _NATIVE_CHARSETS.get(reading.language, (reading.charset,)):
            return reading.text
    return confident[0].text


@dataclass(frozen=True)
class _Reading:
    """One candidate decoding of undeclared bytes, with what speaks for and against it."""

    implausibility: float
    order: int  # the charset's place among the likely ones
    confidence: float  # of the language model in its language
    charset: str
    language: str
    text: str


@lru_cache(maxsize=4096)  # a text has few distinct characters, and the name lookup is the costly part
def _script(char: str) -> str:
    name = unicodedata.name(char, "?")
    first = name.split(" ", 1)[0]
    return "EAST ASIAN" if first in _EAST_ASIAN_SCRIPTS else first


def _implausibility(text: str, language: str) -> float:
    """Share of non-ASCII characters that real text would not have where they stand (0 plausible .. 1)."""
    alphabet = _ALPHABETS.get(language)
    odd = total = 0
    for word in text.split():
        if word.isascii():  # nothing in it is counted, either way
            continue
        letters = [char for char in word if char.isalpha()]
        scripts = {_script(char) for char in letters}
        accented = sum(1 for char in letters if ord(char) > 127)
        # "Çäðàâñòâóéòå" (Russian read as cp1252): no real word is all accents.
        all_accented = scripts == {"LATIN"} and len(letters) >= 3 and accented == len(letters)
        # "φΑΜΟΒΑ": capitals after small letters inside a word are an artefact of the wrong table.
        cases = "".join("l" if char.islower() else "u" for char in letters if char.islower() or char.isupper())
        mixed_case = "lu" in cases
        for index, char in enumerate(word):
            if ord(char) < 128:
                continue
            total += 1
            category = unicodedata.category(char)
            if category[0] in "CS" or category in ("No", "Lm"):
                odd += 1
            elif category[0] == "M" and (index == 0 or unicodedata.category(word[index - 1])[0] == "M"):
                odd += 1  # a combining mark on nothing, or on another mark
            elif char.isalpha() and (len(scripts) > 1 or all_accented or mixed_case):
                odd += 1
            elif alphabet is not None and char.isalpha() and char.lower() not in alphabet:
                odd += 1
    return odd / total if total else 0.0
