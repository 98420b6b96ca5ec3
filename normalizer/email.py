"""Raw email (RFC 5322 / MIME) to a complaint record (pure: no I/O, no clock).

The SMTP listener and the IMAP watcher hand the bytes exactly as received to
:func:`parse`; the channel stores the attachments it returns and builds the
record with :func:`to_complaint`. Real mail is messy: every step here reads
what clients actually send (wrong charset labels, raw 8-bit headers, HTML-only
bodies, winmail.dat) and degrades to something readable instead of failing.
Only bytes that are not a message at all raise :class:`InvalidMessage`.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import datetime as dt
import hashlib
import re
import unicodedata
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses
from functools import lru_cache
from html.parser import HTMLParser
from typing import TYPE_CHECKING

from charset_normalizer import from_bytes as detect_charset
from tnefparse import TNEF

from normalizer import language
from normalizer.bounds import as_invalid_message, encodable, fit, max_length, repair
from normalizer.errors import InvalidMessage
from normalizer.record import BCP47_PATTERN, Attachment, Complainant, Complaint, Flags
from normalizer.reference import REFERENCE_PATTERN, parse_reference

if TYPE_CHECKING:
    from py3langid.langid import LanguageIdentifier

__all__ = [
    "MEDIA_TYPE",
    "MailAttachment",
    "ParsedMail",
    "our_message_id",
    "parse",
    "reference_from_message_ids",
    "to_complaint",
    "warm_up",
]

MEDIA_TYPE = "message/rfc822"


@dataclass(frozen=True)
class MailAttachment:
    """One attachment as found in the message; the channel stores the bytes and lists the result on the record."""

    filename: str | None  # decoded (RFC 2231 / 2047), not yet made safe (the store does that)
    content_type: str
    data: bytes
    inline: bool  # inline image of an HTML body (Content-Disposition inline / referenced by cid)
    content_id: str | None  # without angle brackets, as a cid: URL names it


@dataclass(frozen=True)
class ParsedMail:
    """What the gateway needs from one message: who, what, whether to answer, and how to thread the answer."""

    message_id: str | None  # "<...>" as in the header, None when absent
    channel_message_id: str  # message_id, or "sha256:<hex of raw>" when absent
    sender: str | None  # From address (lower-cased domain), None for null/missing
    sender_name: str | None  # decoded display name
    reply_to: str | None  # where an acknowledgement goes; None when we must not answer
    subject: str  # decoded, "" when absent
    text: str  # the complaint: quoted history and signature removed
    full_text: str  # the whole readable text as sent
    language: str | None  # BCP 47: Content-Language, else detected when confident
    follows_up: str | None  # our reference when this continues a complaint
    automated: str | None  # why it is machine-sent, None for a human
    references: list[str] = field(default_factory=list)  # their References + their Message-ID
    attachments: list[MailAttachment] = field(default_factory=list)
    forwarded: bool = False  # the complaint was forwarded (message/rfc822 part or "Forwarded message" block)


# --------------------------------------------------------------------------- our Message-IDs

# Our acknowledgement's Message-ID carries the reference, so that a reply (whose
# In-Reply-To / References quote it) finds its complaint on any replica with no
# lookup: the trap of helpdesks that open a new ticket for every reply.
_OUR_ID = re.compile(r"<?\s*(C-[0-9A-Z]{4}-[0-9A-Z]{4})\.([0-9a-f]{12})@([^<>\s@]+)\s*>?", re.IGNORECASE)
_REFERENCE = re.compile(REFERENCE_PATTERN)


def our_message_id(reference: str, complaint_id: uuid.UUID, domain: str) -> str:
    """The Message-ID of our acknowledgement for a complaint: ``<C-7K3M-9QXA.1a2b3c4d5e6f@domain>``.

    The hex part (from the complaint's id) keeps ids of acknowledgements for
    different complaints distinct even in the unlikely case of two equal references.
    """
    if not _REFERENCE.match(reference):
        raise ValueError(f"not a complaint reference: {reference!r}")
    return f"<{reference}.{complaint_id.hex[:12]}@{domain.strip().lower()}>"


def reference_from_message_ids(ids: Iterable[str]) -> str | None:
    """The reference in the first of ``ids`` that is one of our Message-IDs, else None.

    Each item may be one id or a whole In-Reply-To / References value.
    """
    for value in ids:
        for match in _OUR_ID.finditer(value):
            reference = match.group(1).upper()
            if _REFERENCE.match(reference):
                return reference
    return None


# --------------------------------------------------------------------------- charsets

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
def _codecs_for(label: str | None) -> tuple[str, ...]:
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


def _decode(data: bytes, declared: str | None, hint: str | None = None, *, detect: bool = True) -> str:
    """Bytes to text: the declared charset when it fits, else a guess; never raises, never gives up."""
    candidates = _codecs_for(declared)
    if candidates and not data.isascii() and _MISLABEL_PRONE.match((declared or "").strip().lower()):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass  # it really is the single-byte charset it says
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
    """Decode bytes whose charset is unknown or wrong."""
    if data.isascii():
        if b"\x1b$" in data or b"\x1b(" in data:
            # Undeclared ISO-2022-JP: 7-bit escapes, common from Japanese mailers.
            return _decode(data, "iso-2022-jp")
        return data.decode("ascii")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    for name in _codecs_for(hint):
        if name in ("utf-8", _CP50220):
            continue
        try:
            return data.decode(name)
        except (UnicodeDecodeError, LookupError):
            continue
    if detect:
        found = _detect(data)
        if found is not None:
            return found
    return data.decode("cp1252", errors="replace")


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


def _detect(data: bytes) -> str | None:
    """The likeliest reading of undeclared 8-bit text.

    Statistical charset detectors (charset-normalizer included) misjudge short
    Latin-script texts (cp1257 for French, cp1252 for Czech). Each candidate
    reading is scored instead: symbols and script mixtures inside words, words
    made only of accented letters, letters outside the detected language's
    alphabet; the language model breaks ties. charset-normalizer's pick joins
    the candidates, for charsets outside the usual ones.
    """
    scored: list[_Reading] = []

    def score(order: int, charset: str) -> None:
        try:
            text = data.decode(charset)
        except (UnicodeDecodeError, LookupError):
            return
        sample = text[:4000]
        language, confidence = _language_identifier()(sample)
        scored.append(_Reading(round(_implausibility(sample, language), 2), order, confidence, charset, language, text))

    for order, name in enumerate(_UNDECLARED_CANDIDATES):
        score(order, name)
    if not scored or min(reading.implausibility for reading in scored) > 0.1:
        # None of the usual charsets reads well: ask the statistical detector.
        best = detect_charset(data[:65536]).best()
        found = best.encoding if best is not None and best.encoding else None
        # It sees UTF-16 in text without a single NUL byte: never what mail carries.
        if found and found not in _UNDECLARED_CANDIDATES and not (found.startswith(("utf_16", "utf_32")) and b"\x00" not in data):
            score(len(_UNDECLARED_CANDIDATES), found)
    if not scored:
        return None
    least = min(reading.implausibility for reading in scored)
    tied = [reading for reading in scored if reading.implausibility <= least + 0.02]
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


def _script(char: str) -> str:
    name = unicodedata.name(char, "?")
    first = name.split(" ", 1)[0]
    return "EAST ASIAN" if first in _EAST_ASIAN_SCRIPTS else first


def _implausibility(text: str, language: str) -> float:
    """Share of non-ASCII characters that real text would not have where they stand (0 plausible .. 1)."""
    alphabet = _ALPHABETS.get(language)
    odd = total = 0
    for word in text.split():
        letters = [char for char in word if char.isalpha()]
        scripts = {_script(char) for char in letters}
        accented = sum(1 for char in letters if ord(char) > 127)
        # "Çäðàâñòâóéòå" (Russian read as cp1252): no real word is all accents.
        all_accented = scripts == {"LATIN"} and len(letters) >= 3 and accented == len(letters)
        # "φΑΜΟΒΑ": capitals after small letters inside a word are an artefact of the wrong table.
        cases = "".join("l" if char.islower() else "u" for char in letters if char.islower() or char.isupper())
        mixed_case = "lu" in cases
        previous = ""
        for char in word:
            mark_on_mark = unicodedata.category(previous).startswith("M") if previous else True
            previous = char
            if ord(char) < 128:
                continue
            total += 1
            category = unicodedata.category(char)
            if category[0] in "CS" or category in ("No", "Lm") or (category[0] == "M" and mark_on_mark):
                odd += 1
            elif char.isalpha() and (len(scripts) > 1 or all_accented or mixed_case):
                odd += 1
            elif alphabet is not None and char.isalpha() and char.lower() not in alphabet:
                odd += 1
    return odd / total if total else 0.0


# --------------------------------------------------------------------------- headers

_ENCODED_WORD = re.compile(rb"=\?([^?\s]{1,80})\?([bBqQ])\?([^?]*?)\?=")
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ue001-\ue003]")


def _raw_values(message: Message, name: str) -> list[bytes]:
    """Every value of a header field as bytes off the wire (unfolded, not yet decoded)."""
    wanted = name.lower()
    values = []
    for key, value in message.raw_items():
        if str(key).strip().lower() == wanted:
            values.append(_FOLD.sub(b"", _wire_bytes(str(value))).strip())
    return values


def _wire_bytes(text: str) -> bytes:
    """The bytes behind a str the parser made from them (ASCII, raw bytes as surrogate escapes)."""
    try:
        return text.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")  # built in memory, not parsed


def _raw_value(message: Message, name: str) -> bytes | None:
    values = _raw_values(message, name)
    return values[0] if values else None


def _has(message: Message, name: str) -> bool:
    return bool(_raw_values(message, name))


def _header_text(raw: bytes | None, hint: str | None = None) -> str:
    """A header value as text, RFC 2047 encoded-words decoded; raw 8-bit decoded as best we can."""
    if not raw:
        return ""
    pieces: list[str] = []
    # Adjacent encoded-words in one charset are joined as bytes before decoding:
    # mailers split UTF-8 and GBK words mid-character.
    pending = bytearray()
    pending_charset: str | None = None
    previous_encoded = False

    def flush() -> None:
        nonlocal pending
        if pending:
            pieces.append(_decode(bytes(pending), pending_charset, hint, detect=False))
        pending = bytearray()

    position = 0
    for match in _ENCODED_WORD.finditer(raw):
        between = raw[position : match.start()]
        position = match.end()
        word = _word_bytes(match.group(2), match.group(3))
        if word is None:
            flush()
            pieces.append(_literal(between + match.group(0), hint))
            previous_encoded = False
            continue
        charset = match.group(1).decode("ascii", "replace").split("*", 1)[0].lower()
        if between.strip(b" \t\r\n") or not previous_encoded:
            flush()
            pieces.append(_literal(between, hint))
        elif charset != pending_charset:
            flush()  # RFC 2047 §6.2: the whitespace between encoded-words is not text
        pending_charset = charset
        pending.extend(word)
        previous_encoded = True
    flush()
    pieces.append(_literal(raw[position:], hint))
    return " ".join(_CONTROLS.sub(" ", "".join(pieces)).split())


def _literal(data: bytes, hint: str | None) -> str:
    if not data:
        return ""
    # Short strings defeat statistical detection; try UTF-8 (RFC 6532), the
    # message's own charset, then what is likeliest on the wire.
    return _decode(data, None, hint, detect=len(data) >= 24)


def _word_bytes(encoding: bytes, text: bytes) -> bytes | None:
    if encoding in (b"B", b"b"):
        return _base64(text)
    try:
        return binascii.a2b_qp(text, header=True)
    except (binascii.Error, ValueError):
        return None


def _base64(data: bytes) -> bytes | None:
    cleaned = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
    if len(cleaned) % 4 == 1:
        cleaned = cleaned[:-1]  # a stray character: the rest still decodes
    try:
        return base64.b64decode(cleaned + b"=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError):
        return None


# --------------------------------------------------------------------------- MIME parameters

# RFC 6838 §4.2: type and subtype names are at most 127 characters each (and the record takes 255 in all).
_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]{1,127}/[a-z0-9!#$&^_.+-]{1,127}")


def _header_string(raw: bytes | None, hint: str | None) -> str:
    """A structured header (Content-Type, Content-Disposition) as text, encoded-words left alone."""
    if not raw:
        return ""
    return _CONTROLS.sub(" ", _literal(raw, hint))


def _parameters(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; a=b; c*0*=...`` to (lower-cased main value, parameters), RFC 2231 joined and decoded.

    Written here rather than using ``Message.get_param``: that one fails on raw
    8-bit values, and those are common in attachment names.
    """
    parts = _split_outside_quotes(value)
    main = parts[0].strip().lower() if parts else ""
    simple: dict[str, str] = {}
    extended: dict[str, dict[int, tuple[str, bool]]] = {}
    for part in parts[1:]:
        name, sep, raw_value = part.partition("=")
        if not sep:
            continue
        name = name.strip().lower()
        raw_value = _unquote(raw_value.strip())
        match = re.fullmatch(r"([^*]+)\*(?:(\d{1,3})\*?|)", name)
        if match:
            section = int(match.group(2)) if match.group(2) is not None else 0
            encoded = name.endswith("*")
            extended.setdefault(match.group(1), {})[section] = (raw_value, encoded)
        elif name and name not in simple:
            simple[name] = raw_value
    for name, sections in extended.items():
        simple[name] = _rfc2231(sections)
    return main, simple


def _split_outside_quotes(value: str) -> list[str]:
    parts, current, quoted, escaped = [], [], False, False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            quoted = not quoted
            current.append(char)
        elif char == ";" and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _rfc2231(sections: dict[int, tuple[str, bool]]) -> str:
    charset: str | None = None
    data = bytearray()
    for index in sorted(sections):
        text, encoded = sections[index]
        if encoded:
            if index == min(sections) and text.count("'") >= 2:
                charset, _language, text = text.split("'", 2)
            data.extend(urllib.parse.unquote_to_bytes(text))
        else:
            data.extend(text.encode("utf-8", "surrogateescape"))
    return _decode(bytes(data), charset, detect=False)


class _Part:
    """A MIME part's type, parameters and disposition, read once."""

    def __init__(self, message: Message, hint: str | None, default_type: str = "text/plain") -> None:
        self.message = message
        content_type, self.params = _parameters(_header_string(_raw_value(message, "content-type"), hint))
        if not _MEDIA_TYPE.fullmatch(content_type):
            # RFC 2045 §5.2: an unreadable type is text/plain (or the digest default).
            content_type = default_type
        self.content_type = content_type
        self.maintype = content_type.split("/", 1)[0]
        disposition, disposition_params = _parameters(_header_string(_raw_value(message, "content-disposition"), hint))
        self.disposition = disposition
        # Outlook and Gmail put RFC 2047 words inside the quoted name, against RFC 2231: decode them too.
        name = disposition_params.get("filename") or self.params.get("name") or ""
        self.filename = _header_text(name.encode("utf-8", "surrogateescape"), hint) or None
        content_id = _header_string(_raw_value(message, "content-id"), hint).strip().strip("<>").strip()
        self.content_id = content_id or None

    @property
    def is_attachment(self) -> bool:
        return self.disposition == "attachment" or self.filename is not None


def _payload_bytes(message: Message, linesep: bytes) -> bytes:
    """The decoded body of a part: base64 / quoted-printable / uuencode undone, 8-bit bytes exactly as received."""
    payload = message.get_payload()
    if isinstance(payload, list):
        return _serialized_body(message, linesep)
    try:
        # decode=True is the one call that returns the bytes as received: without
        # it, compat32 re-decodes 8-bit text with the declared charset (or ASCII).
        data = message.get_payload(decode=True)
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        return b""
    return data if isinstance(data, bytes) else b""


def _serialized_body(message: Message, linesep: bytes) -> bytes:
    """The body of a part whose payload Python parsed into messages (message/rfc822, delivery-status)."""
    serialized = _whole_message_bytes(message, linesep)
    if serialized.startswith(linesep):
        return serialized[len(linesep) :]  # a part without header fields
    _head, separator, body = serialized.partition(linesep * 2)
    return body if separator else b""


def _whole_message_bytes(message: Message, linesep: bytes) -> bytes:
    """A parsed message written out again; with no refolding and the original line ends, that is the bytes as received."""
    try:
        return message.as_bytes(policy=compat32.clone(max_line_length=0, linesep=linesep.decode()))
    except (ValueError, TypeError, LookupError, UnicodeError):
        return b""


# --------------------------------------------------------------------------- HTML to text

# Markers the converters and the quote stripper share (private-use code points,
# removed from every decoded text first so that a sender cannot forge them).
_CUT = "\ue001"  # everything from here on is quoted history
_QUOTE_START = "\ue002"  # a quoted region (blockquote, Gmail's quote) ...
_QUOTE_END = "\ue003"  # ... ends here

_BLOCK_TAGS = frozenset(
    "address article aside blockquote center dd div dl dt fieldset figcaption figure footer form h1 h2 h3 h4 h5 h6 "
    "header hr li main nav ol p pre section table tbody thead tfoot tr ul".split()
)
# Blocks a browser sets apart with a margin: a blank line before and after.
_SPACED_TAGS = frozenset("h1 h2 h3 h4 h5 h6 ol pre table ul".split())
_SKIPPED_TAGS = frozenset({"script", "style", "title", "xml", "template", "head"})
_VOID_TAGS = frozenset({"br", "hr", "img", "meta", "link", "input", "wbr", "col", "area", "base", "source"})


@dataclass
class _Region:
    """A quoted region of an HTML body: it ends when its element closes."""

    tag: str
    depth: int = 1  # open elements of this tag since the region began


class _HtmlText(HTMLParser):
    """HTML body to readable text with the standard library: block elements keep their line breaks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip_depth = 0
        self.pre_depth = 0
        self.regions: list[_Region] = []  # open quoted regions, innermost last
        self.cids: set[str] = set()
        # Outlook writes a blank line as <p class=MsoNormal><o:p>&nbsp;</o:p></p>
        # and a paragraph without margins as MsoNormal; other <p>s have a margin.
        self.paragraph: tuple[bool, bool] | None = None  # (Outlook's margin-less paragraph, nothing written yet)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: (value or "") for name, value in attrs}
        if tag == "body":
            self.skip_depth = 0  # a head that was never closed ends here
        if tag in _SKIPPED_TAGS:
            self.skip_depth += 1
            return
        if self.skip_depth:
            return
        if tag == "img":
            source = values.get("src", "").strip()
            if source.lower().startswith("cid:"):
                self.cids.add(urllib.parse.unquote(source[4:]).strip("<>"))
            return
        for region in self.regions:
            if region.tag == tag:
                region.depth += 1
        if tag == "br":
            self.out.append("\n")
        elif tag in _SPACED_TAGS:
            self._blank_line()
        elif tag in _BLOCK_TAGS:
            self._line()
        if tag == "p":
            outlook = "msonormal" in values.get("class", "").lower()
            self.paragraph = (outlook, True)
            if outlook:
                self._line()
            else:
                self._blank_line()
        if tag == "li":
            self.out.append("- ")
        elif tag == "pre":
            self.pre_depth += 1
        elif tag in ("td", "th"):
            self.out.append(" ")
        marker = _quote_marker(tag, values)
        if marker == _QUOTE_START and tag not in _VOID_TAGS:
            self.regions.append(_Region(tag))
            self.out.append(f"\n{_QUOTE_START}\n")
        elif marker == _CUT:
            self.out.append(f"\n{_CUT}\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID_TAGS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self.skip_depth = max(0, self.skip_depth - 1)
            return
        if self.skip_depth:
            return
        if tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
        if tag in _SPACED_TAGS:
            self._blank_line()
        elif tag in _BLOCK_TAGS:
            self._line()
        if tag == "p" and self.paragraph is not None:
            outlook, empty = self.paragraph
            if empty:
                self.out.append("\n")
            elif not outlook:
                self._blank_line()
            self.paragraph = None
        for region in self.regions:
            if region.tag == tag:
                region.depth -= 1
        while self.regions and self.regions[-1].depth <= 0:
            self.regions.pop()
            self.out.append(f"\n{_QUOTE_END}\n")

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        data = _CONTROLS.sub("", data.replace("\r\n", "\n")).replace("\xa0", " ")
        if not self.pre_depth:
            data = re.sub(r"\s+", " ", data)
            if not self.out or self.out[-1].endswith("\n"):
                # Source indentation between blocks is not text a person wrote.
                data = data.lstrip(" ")
        if data:
            self.out.append(data)
            if self.paragraph is not None and data.strip():
                self.paragraph = (self.paragraph[0], False)

    def _line(self) -> None:
        if self.out and not self.out[-1].endswith("\n"):
            self.out.append("\n")

    def _blank_line(self) -> None:
        self._line()
        if self.out and not "".join(self.out[-2:]).endswith("\n\n"):
            self.out.append("\n")

    def text(self) -> str:
        self.out.extend(f"\n{_QUOTE_END}\n" for _region in self.regions)
        self.regions = []
        return "".join(self.out)


def _quote_marker(tag: str, attributes: dict[str, str]) -> str | None:
    """Is this element where a client put the quoted history of a reply?"""
    classes = attributes.get("class", "").lower().split()
    element_id = attributes.get("id", "").lower()
    if tag == "blockquote" or "gmail_quote" in classes or "yahoo_quoted" in classes or "protonmail_quote" in classes:
        return _QUOTE_START
    if element_id in ("divrplyfwdmsg", "appendonsend") or "moz-cite-prefix" in classes or "zmail_extra" in classes:
        return _CUT  # the header of a quoted message; the quoted body follows as siblings
    style = attributes.get("style", "").lower().replace(" ", "")
    if tag == "div" and ("border-top:solid#e1e1e1" in style or "border-top:solid#b5c4df" in style):
        return _CUT  # Outlook desktop's separator above "From: ... Sent: ..."
    return None


def _html_to_text(html: str) -> tuple[str, set[str]]:
    parser = _HtmlText()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError, IndexError):
        # html.parser gives up on some broken markup; what it read so far is kept.
        pass
    return parser.text(), parser.cids


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def _html_charset(data: bytes) -> str | None:
    match = _META_CHARSET.search(data[:8192])
    return match.group(1).decode("ascii") if match else None


def _unflow(text: str, delsp: bool) -> str:
    """RFC 3676 format=flowed: join soft-broken lines back into paragraphs."""
    lines: list[tuple[int, str]] = []
    joining = False
    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        content = content.removeprefix(" ")  # space-stuffing
        soft = content.endswith(" ") and content != "-- "
        if soft and delsp:
            content = content[:-1]
        if joining and lines and lines[-1][0] == depth:
            lines[-1] = (depth, lines[-1][1] + content)
        else:
            lines.append((depth, content))
        joining = soft
    return "\n".join(((">" * depth + " ") if depth else "") + content for depth, content in lines)


# --------------------------------------------------------------------------- the body


@dataclass
class _Body:
    """What a walk over the MIME tree collects."""

    hint: str | None
    linesep: bytes  # the raw message's line end, to write embedded messages out as they came
    own: list[str] = field(default_factory=list)  # the sender's own text blocks
    forwarded_text: list[str] = field(default_factory=list)  # text of forwarded messages
    attachments: list[MailAttachment] = field(default_factory=list)
    cids: set[str] = field(default_factory=set)
    forwarded: bool = False
    report_type: str | None = None
    returned_ids: list[str] = field(default_factory=list)  # Message-IDs of messages a bounce returns
    parts: int = 0


_MAX_DEPTH = 64  # forwards of forwards nest two levels each; hostile nesting stops here
_MAX_PARTS = 1000
_SIGNATURES = frozenset({"application/pgp-signature", "application/pkcs7-signature", "application/x-pkcs7-signature"})
_BODY_TYPES = frozenset({"text/plain", "text/html", "text/enriched", "text/richtext"})


def _walk(
    message: Message, body: _Body, depth: int = 0, *, default_type: str = "text/plain", texts: list[str] | None = None
) -> None:
    """Collect readable text (into ``texts``, the own text by default) and attachments of a part and its children."""
    if body.parts >= _MAX_PARTS or depth > _MAX_DEPTH:
        return
    body.parts += 1
    texts = body.own if texts is None else texts
    part = _Part(message, body.hint, default_type)
    payload = message.get_payload()

    if part.content_type in ("message/rfc822", "message/global") and isinstance(payload, list) and payload:
        _forwarded(payload[0], part, body, depth)
        return
    if isinstance(payload, list) and part.maintype == "multipart":
        children = [child for child in payload if isinstance(child, Message)]
        subtype = part.content_type.split("/", 1)[1]
        if subtype == "alternative":
            _alternative(children, body, depth, texts)
        elif subtype == "related":
            _related(children, part, body, depth, texts)
        elif subtype == "report":
            _report(children, part, body, depth, texts)
        else:
            child_default = "message/rfc822" if subtype == "digest" else "text/plain"
            for child in children:
                _walk(child, body, depth + 1, default_type=child_default, texts=texts)
        return
    if part.maintype == "multipart":
        # No boundary found: the parts cannot be told apart, but the text can still be read.
        text = _decode(_payload_bytes(message, body.linesep), part.params.get("charset"), body.hint)
        if text.strip():
            texts.append(_CONTROLS.sub("", text.replace("\r\n", "\n")))
        return
    if part.content_type in _SIGNATURES:
        return  # a signature of the message, not something the customer attached
    if part.content_type in _BODY_TYPES and not part.is_attachment:
        text = _part_text(message, part, body)
        if text.strip():
            texts.append(text)
        return
    data = _payload_bytes(message, body.linesep)
    winmail = part.content_type == "application/ms-tnef" or (part.filename or "").lower() == "winmail.dat"
    if winmail and _tnef(data, body, texts):
        return
    body.attachments.append(
        MailAttachment(
            filename=part.filename,
            content_type=part.content_type,
            data=data,
            inline=part.disposition == "inline" and part.maintype == "image",
            content_id=part.content_id,
        )
    )


def _part_text(message: Message, part: _Part, body: _Body) -> str:
    data = _payload_bytes(message, body.linesep)
    charset = part.params.get("charset")
    if part.content_type == "text/html":
        text = _decode(data, charset or _html_charset(data), body.hint)
        readable, cids = _html_to_text(_CONTROLS.sub("", text.replace("\r\n", "\n")))
        body.cids |= cids
        return readable
    text = _CONTROLS.sub("", _decode(data, charset, body.hint).replace("\r\n", "\n").replace("\r", "\n"))
    if part.params.get("format", "").lower() == "flowed":
        text = _unflow(text, part.params.get("delsp", "").lower() == "yes")
    if part.content_type in ("text/enriched", "text/richtext"):
        text = re.sub(r"<[^<>]{1,40}>", "", text)
    return text


def _kind(message: Message, hint: str | None, depth: int = 0) -> str:
    """Which kind of text an alternative offers: "plain", "html" or "" (none)."""
    part = _Part(message, hint)
    payload = message.get_payload()
    if part.content_type == "text/plain" and not part.is_attachment:
        return "plain"
    if part.content_type in _BODY_TYPES and not part.is_attachment:
        return "html"
    if isinstance(payload, list) and part.maintype == "multipart" and depth < 4:
        kinds = [_kind(child, hint, depth + 1) for child in payload if isinstance(child, Message)]
        return "plain" if "plain" in kinds else "html" if "html" in kinds else ""
    return ""


def _alternative(children: list[Message], body: _Body, depth: int, texts: list[str]) -> None:
    """Read the plain-text alternative when it says something, else the richest; keep every alternative's attachments."""
    kinds = [_kind(child, body.hint) for child in children]
    chosen: int | None = None
    for index, kind in enumerate(kinds):
        if kind == "plain":
            trial = _Body(hint=body.hint, linesep=body.linesep, parts=body.parts)
            _walk(children[index], trial, depth + 1)
            if "".join(trial.own).strip():
                chosen = index
                break
    if chosen is None:
        readable = [index for index, kind in enumerate(kinds) if kind]
        chosen = readable[-1] if readable else None
    for index, child in enumerate(children):
        if index == chosen:
            _walk(child, body, depth + 1, texts=texts)
        else:
            # Another rendering of the same text; only its inline images and files count.
            _walk(child, body, depth + 1, texts=[])


def _related(children: list[Message], part: _Part, body: _Body, depth: int, texts: list[str]) -> None:
    start = part.params.get("start", "").strip().strip("<>")
    root = 0
    if start:
        for index, child in enumerate(children):
            if _Part(child, body.hint).content_id == start:
                root = index
                break
    for index, child in enumerate(children):
        _walk(child, body, depth + 1, texts=texts if index == root else [])


def _report(children: list[Message], part: _Part, body: _Body, depth: int, texts: list[str]) -> None:
    """RFC 6522: the first part is for people; the rest (status, returned message) is kept as attachments."""
    body.report_type = part.params.get("report-type", "").strip().lower() or "unknown"
    for index, child in enumerate(children):
        if index == 0:
            _walk(child, body, depth + 1, texts=texts)
            continue
        returned = _Part(child, body.hint)
        payload = child.get_payload()
        if returned.content_type in ("message/rfc822", "message/global") and isinstance(payload, list) and payload:
            body.returned_ids.extend(_ids(_header_string(_raw_value(payload[0], "message-id"), None)))
        elif returned.content_type == "text/rfc822-headers":
            headers = _payload_bytes(child, body.linesep)
            body.returned_ids.extend(
                _ids(_header_string(_raw_value(message_from_bytes(headers, policy=compat32), "message-id"), None))
            )
        body.attachments.append(
            MailAttachment(
                filename=returned.filename,
                content_type=returned.content_type,
                data=_payload_bytes(child, body.linesep),
                inline=False,
                content_id=returned.content_id,
            )
        )


def _forwarded(inner: Message, part: _Part, body: _Body, depth: int) -> None:
    """A message forwarded as an attachment: kept whole, and its text and files read into the complaint."""
    body.forwarded = True
    hint = body.hint
    summary = [
        "---------- Forwarded message ----------",
        f"From: {_header_text(_raw_value(inner, 'from'), hint)}",
        f"Date: {_header_text(_raw_value(inner, 'date'), hint)}",
        f"Subject: {_header_text(_raw_value(inner, 'subject'), hint)}",
        "",
    ]
    inner_texts: list[str] = []
    _walk(inner, body, depth + 1, texts=inner_texts)
    body.forwarded_text.append("\n".join(summary) + "\n" + "\n\n".join(inner_texts))
    subject = _header_text(_raw_value(inner, "subject"), hint)
    body.attachments.append(
        MailAttachment(
            filename=part.filename or (f"{subject[:100]}.eml" if subject else "forwarded.eml"),
            content_type=part.content_type,
            data=_whole_message_bytes(inner, body.linesep),
            inline=False,
            content_id=part.content_id,
        )
    )


# Media types for names found in a winmail.dat, without reading the system's
# mime.types (a normalizer reads no files).
_MEDIA_TYPES = {
    "pdf": "application/pdf", "jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif",
    "heic": "image/heic", "tif": "image/tiff", "tiff": "image/tiff", "bmp": "image/bmp", "txt": "text/plain",
    "csv": "text/csv", "htm": "text/html", "html": "text/html", "zip": "application/zip", "eml": "message/rfc822",
    "msg": "application/vnd.ms-outlook", "doc": "application/msword", "xls": "application/vnd.ms-excel",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
}  # fmt: skip


_PR_ATTACH_MIME_TAG = 0x370E  # the MAPI property in which Outlook keeps an attachment's media type


def _tnef(data: bytes, body: _Body, texts: list[str]) -> bool:
    """Unpack Outlook's winmail.dat into its files (and its text when the MIME parts had none).

    False when it cannot be read: the caller then keeps it as an opaque attachment.
    """
    try:
        tnef = TNEF(data, do_checksum=False)
        files = []
        for item in tnef.attachments:
            name = item.long_filename() or None
            tags = [attribute.data for attribute in item.mapi_attrs if attribute.name == _PR_ATTACH_MIME_TAG]
            files.append((name, tags[0] if tags and isinstance(tags[0], str) else None, bytes(item.data)))
        text = tnef.body or tnef.htmlbody
    except Exception:  # tnefparse fails in many ways on damaged input; the bytes are kept either way
        return False
    if not files and not text:
        return False
    for name, tag, content in files:
        extension = name.rsplit(".", 1)[-1].lower() if name and "." in name else ""
        tag = (tag or "").strip().lower()
        body.attachments.append(
            MailAttachment(
                filename=name,
                content_type=tag if _MEDIA_TYPE.fullmatch(tag) else _MEDIA_TYPES.get(extension, "application/octet-stream"),
                data=content,
                inline=False,
                content_id=None,
            )
        )
    if text and not "".join(texts).strip():
        if isinstance(text, bytes):
            text = _decode(text.rstrip(b"\x00"), None, body.hint)
        if text.lstrip().lower().startswith(("<html", "<!doctype")):
            text, _cids = _html_to_text(text)
        texts.append(_CONTROLS.sub("", text.replace("\r\n", "\n")))
    return True


# --------------------------------------------------------------------------- quotes and signatures

_ATTRIBUTION = [
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        r"^on\b.{0,240}\bwrote\s*:$",  # Gmail, Apple Mail, Thunderbird
        r"^am\b.{0,240}\bschrieb\b.{0,240}:$",  # German
        r"^le\b.{0,240}\ba [ée]crit\s*:$",  # French
        r"^w dniu\b.{0,240}\bpisze\s*:$",  # Polish Thunderbird
        r"^.{0,240}\bnapisał(\(a\)|a)?\s*:$",  # Polish Gmail
        r"^el\b.{0,240}\bescribi[óo]\s*:$",  # Spanish
        r"^op\b.{0,240}\bschreef\b.{0,240}:$",  # Dutch
        r"^il\b.{0,240}\bha scritto\s*:$",  # Italian
        r"^em\b.{0,240}\bescreveu\s*:$",  # Portuguese
        r"^dne\b.{0,240}\bnapsal(\(a\)|a)?\s*:$",  # Czech
        r"^.{0,240}\bпишет\s*:$",  # Russian Thunderbird
        r"^(вы писали|you wrote)\b.{0,240}:$",  # The Bat!
        r"^.{0,240}写道\s*[:：]$",  # Chinese Gmail
    )
]
_DIGIT = re.compile(r"\d")
_ORIGINAL_MESSAGE = re.compile(
    r"^\s*-{2,}\s*(original message|ursprüngliche nachricht|message d'origine|mensaje original|oryginalna wiadomość|"
    r"wiadomość oryginalna|oorspronkelijk bericht|messaggio originale|mensagem original|исходное сообщение|"
    r"původní zpráva|原始邮件)\s*-{2,}\s*$",
    re.IGNORECASE,
)
_FORWARD_MARKER = re.compile(
    r"^\s*(-{2,}\s*(forwarded message|weitergeleitete nachricht|message transf[ée]r[ée]|mensaje reenviado|"
    r"wiadomość przekazana dalej|przekazana wiadomość|doorgestuurd bericht|messaggio inoltrato|mensagem encaminhada|"
    r"пересылаемое сообщение|přeposlaná zpráva|转发的邮件)\s*-{2,}|begin forwarded message\s*:|"
    r"anfang der weitergeleiteten nachricht\s*:|d[ée]but du message r[ée]exp[ée]di[ée]\s*:)\s*$",
    re.IGNORECASE,
)
_HEADER_FROM = re.compile(r"^\*?(from|von|de|od|van|da|от|från|fra|发件人|差出人)\s*:\*?\s*\S", re.IGNORECASE)
_HEADER_SENT = re.compile(
    r"^\*?(sent|date|gesendet|datum|envoy[ée]|enviado|enviado el|wysłano|data|verzonden|inviato|отправлено|odesláno|"
    r"skickat|sendt|发送时间|送信日時)\s*:",
    re.IGNORECASE,
)
_SIGNATURE = re.compile(r"^--\s?$")  # RFC 3676 §4.3 "-- ", often sent without its space
_DEVICES = (
    r"(iphone|ipad|ipod|android|samsung|galaxy|huawei|xiaomi|redmi|honor|oppo|vivo|oneplus|pixel|nokia|sony|motorola|"
    r"blackberry|mobile|smartphone|handy|tablet|telefon\w*|urządzenia|appareil|dispositivo|móvil|celular|телефона|"
    r"mojego iphone'?a|iphone'?a)"
)
_MOBILE_SIGNATURE = re.compile(
    rf"^\s*(sent from my {_DEVICES}\b.{{0,30}}|sent from (outlook|mail|yahoo mail) for \w+.{{0,20}}|"
    rf"get outlook for (ios|android).{{0,20}}|von meinem .{{1,40}} gesendet\.?|gesendet von meinem {_DEVICES}\b.{{0,30}}|"
    rf"envoy[ée] de mon {_DEVICES}\b.{{0,30}}|enviado desde mi {_DEVICES}\b.{{0,30}}|wysłane z (mojego )?{_DEVICES}.{{0,30}}|"
    rf"verzonden (vanaf|met) mijn {_DEVICES}\b.{{0,30}}|inviato da(l mio)? {_DEVICES}\b.{{0,30}}|"
    rf"отправлено с {_DEVICES}.{{0,30}}|发自我的\S{{1,20}})\s*$",
    re.IGNORECASE,
)
_FORWARD_SUBJECT = re.compile(r"^\s*(fwd?|fw|wg|tr|rv|enc|doorst|pd|vs|i)\s*:", re.IGNORECASE)
_OUTLOOK_RULE = re.compile(r"^\s*_{10,}\s*$")


def _split_forwarded(text: str, forward_subject: bool) -> tuple[str, str | None]:
    """(own words, forwarded part) of a text with an inline forward ("---------- Forwarded message ---------").

    Only a forward that starts before any quoted history counts: a reply that
    quotes an old forward is a reply. Gmail puts its forward inside the quote
    container, so a marker that opens a top-level quoted region counts too.
    """
    lines = text.split("\n")
    depth = 0
    region_start = False
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped == _QUOTE_START:
            depth += 1
            region_start = depth == 1
            continue
        if stripped == _QUOTE_END:
            depth = max(0, depth - 1)
            region_start = False
            continue
        if not stripped:
            continue
        if _FORWARD_MARKER.match(stripped) and (depth == 0 or region_start):
            return "\n".join(lines[:index]), "\n".join(lines[index:])
        if depth == 0 and forward_subject and (_ORIGINAL_MESSAGE.match(stripped) or _outlook_header_at(lines, index)):
            # Outlook forwards look like replies; the subject tells them apart.
            start = index - 1 if index and _OUTLOOK_RULE.match(lines[index - 1]) else index
            return "\n".join(lines[:start]), "\n".join(lines[start:])
        if depth == 0 and (stripped == _CUT or stripped.startswith(">") or _attribution_at(lines, index)):
            break
        region_start = False
    return text, None


def _outlook_header_at(lines: list[str], index: int) -> bool:
    """A "From: ... / Sent: ..." block quoting the previous message starts at this line."""
    if index >= len(lines) or not _HEADER_FROM.match(lines[index].strip()):
        return False
    following = [line.strip() for line in lines[index + 1 : index + 6]]
    return any(_HEADER_SENT.match(line) for line in following)


def _attribution_at(lines: list[str], index: int) -> int:
    """How many lines an attribution ("On ... wrote:") starting here spans (clients wrap it), 0 if none."""
    joined = ""
    for span in range(3):
        if index + span >= len(lines):
            break
        joined = (joined + " " + lines[index + span].strip()).strip()
        if len(joined) > 500:
            break
        if not joined.endswith((":", "：")):
            continue  # every attribution ends in a colon: most lines are out at once
        # Every client writes a date or time into it; "On Monday he wrote:" in
        # the customer's own story has none.
        if _DIGIT.search(joined) and any(pattern.match(joined) for pattern in _ATTRIBUTION):
            return span + 1
    return 0


def _next_content(lines: list[str], start: int) -> str | None:
    """The next non-blank line (markers included), None at the end."""
    for line in lines[start:]:
        if line.strip():
            return line.strip()
    return None


def _strip_history(text: str) -> str:
    """The sender's own words: quoted history, attributions and signatures removed."""
    lines = text.split("\n")
    kept: list[str] = []
    depth = 0
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        if stripped == _QUOTE_START:
            depth += 1
        elif stripped == _QUOTE_END:
            depth = max(0, depth - 1)
        elif depth:
            pass  # inside a quoted region
        elif (
            stripped == _CUT
            or _SIGNATURE.match(line)
            or _MOBILE_SIGNATURE.match(stripped)
            or _ORIGINAL_MESSAGE.match(stripped)
            or _outlook_header_at(lines, index)
            or (_OUTLOOK_RULE.match(line) and _outlook_header_at(lines, _next_index(lines, index + 1)))
        ):
            break  # the rest is a signature or the previous message
        elif span := _attribution_at(lines, index):
            following = _next_content(lines, index + span)
            if following is not None and not following.startswith((">", _QUOTE_START)):
                break  # an attribution over an unmarked quote (converted HTML): the rest is history
            index += span  # the attribution of quoted lines, which are dropped below
            continue
        elif not stripped.startswith(">"):
            kept.append(line)
        index += 1
    return _tidy("\n".join(kept))


def _next_index(lines: list[str], start: int) -> int:
    for index in range(start, len(lines)):
        if lines[index].strip():
            return index
    return len(lines)


def _tidy(text: str) -> str:
    """Trim lines, drop markers, collapse runs of blank lines."""
    text = text.replace(_CUT, "").replace(_QUOTE_START, "").replace(_QUOTE_END, "")
    tidy: list[str] = []
    for line in text.split("\n"):
        line = line.rstrip()
        if line.strip():
            tidy.append(line)
        elif tidy and tidy[-1] != "":
            tidy.append("")
    return "\n".join(tidy).strip()


# --------------------------------------------------------------------------- automated mail

_OUT_OF_OFFICE_SUBJECT = re.compile(
    r"^\s*(automatic reply|auto(matic)?[- ]?reply|autoreply|auto[- ]response|out of (the )?office|away from (the )?office|"
    r"on vacation|vacation reply|abwesenheitsnotiz|automatische antwort|abwesend|außer haus|nicht im büro|"
    r"r[ée]ponse automatique|absence du bureau|absent du bureau|en cong[ée]s?|"
    r"respuesta autom[áa]tica|fuera de la oficina|ausente|"
    r"odpowiedź automatyczna|automatyczna odpowiedź|poza biurem|nieobecność|"
    r"automatisch antwoord|afwezig|niet aanwezig|buiten kantoor|"
    r"risposta automatica|fuori sede|fuori ufficio|resposta autom[áa]tica|fora do escrit[óo]rio|"
    r"automatická odpověď|mimo kancelář|автоответ|автоматический ответ|自动回复|自動応答|自動返信)(\b|$|[:：])",
    re.IGNORECASE,
)
_ROBOTS = re.compile(r"(?:^|[\s<\"'])(mailer-daemon|postmaster)(?:@|>|$|\s)", re.IGNORECASE)
_REPORTS = {
    "delivery-status": "bounce (delivery-status report)",
    "disposition-notification": "read receipt (disposition-notification report)",
}


def _automated(message: Message, subject: str, sender: str | None, envelope_sender: str | None, report: str | None) -> str | None:
    """Why this message was sent by a machine (RFC 3834 §2, CHANNEL_RULES), None for a person.

    The most telling reason first: a bounce is also from a null sender.
    """
    if report is not None:
        return _REPORTS.get(report, f"report ({report[:40]})")
    auto_submitted = _header_string(_raw_value(message, "auto-submitted"), None).split(";")[0].strip().lower()
    if auto_submitted and auto_submitted != "no":
        return f"Auto-Submitted: {auto_submitted[:60]}"
    if envelope_sender is not None:
        if not envelope_sender.strip().strip("<>").strip():
            return "null sender"
    elif any(not value.strip().strip(b"<>").strip() for value in _raw_values(message, "return-path")):
        return "null sender"
    for address in (envelope_sender, sender, _header_string(_raw_value(message, "from"), None)):
        robot = _ROBOTS.search(address or "")
        if robot:
            return "MAILER-DAEMON" if robot.group(1).lower() == "mailer-daemon" else "postmaster"
    for name in ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress", "X-Loop"):
        if _has(message, name):
            return name
    list_fields = [str(key).strip() for key, _value in message.raw_items() if str(key).strip().lower().startswith("list-")]
    if list_fields:
        return "List-Id" if any(name.lower() == "list-id" for name in list_fields) else list_fields[0][:60]
    precedence = _header_string(_raw_value(message, "precedence"), None).strip().lower()
    if precedence in ("bulk", "list", "junk"):
        return f"Precedence: {precedence}"
    if _OUT_OF_OFFICE_SUBJECT.match(subject):
        return "out-of-office subject"
    return None


# --------------------------------------------------------------------------- addresses, ids, language

_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"\\]+@[^@\s<>()\[\],;:\"\\]+$")
_MESSAGE_ID = re.compile(r"<[^<>\s]{1,900}>")
_MAX_REFERENCES = 20


def _address(raw: bytes | None, hint: str | None) -> tuple[str | None, str | None]:
    """(decoded display name, address with lower-cased domain) of the first mailbox in an address header."""
    if not raw:
        return None, None
    value = _header_string(raw, hint)
    for name, address in getaddresses([value]):
        address = address.strip()
        if not _ADDRESS.match(address):
            continue
        local, domain = address.rsplit("@", 1)
        display = _header_text(name.encode("utf-8", "surrogateescape"), hint).strip().strip("\"'").strip()
        return display or None, f"{local}@{domain.lower()}"
    # No usable address ("MAILER-DAEMON", "<>", "undisclosed-recipients:;"): a name at most.
    names = [name for name, _address in getaddresses([value]) if name]
    if names:
        return _header_text(names[0].encode("utf-8", "surrogateescape"), hint) or None, None
    return None, None


def _ids(value: str) -> list[str]:
    return _MESSAGE_ID.findall(value)


def _message_id(message: Message) -> str | None:
    value = _header_string(_raw_value(message, "message-id"), None).strip()
    found = _ids(value)
    if found:
        return found[0]
    # Some mailers omit the angle brackets; the id is still theirs.
    if value and " " not in value and len(value) <= 900 and "@" in value:
        return f"<{value}>"
    return None


def _references(message: Message, message_id: str | None) -> list[str]:
    """RFC 5322 §3.6.4: their References (or In-Reply-To), then their Message-ID."""
    found = _ids(_header_string(_raw_value(message, "references"), None))
    if not found:
        found = _ids(_header_string(_raw_value(message, "in-reply-to"), None))[:1]
    if message_id:
        found.append(message_id)
    unique = list(dict.fromkeys(found))
    if len(unique) > _MAX_REFERENCES:
        # Keep the thread's root and the most recent: what mail clients do too.
        unique = unique[:1] + unique[-(_MAX_REFERENCES - 1) :]
    return unique


def _language_model() -> LanguageIdentifier:
    return language.model()


def _language_identifier() -> Callable[[str], tuple[str, float]]:
    return _language_model().classify


def warm_up() -> None:
    """Load the language model now rather than on the first message."""
    _language_model()


_LANGUAGE_CONFIDENCE = 0.9
_CHINESE = frozenset({"zh", "wuu", "yue"})
_NO_LANGUAGE = "zxx"  # the model's label for text that is no language (codes, numbers)
_LANGUAGE_MIN_LETTERS = 12
_BCP47 = re.compile(BCP47_PATTERN)


def _language(message: Message, text: str) -> str | None:
    """BCP 47: the sender's Content-Language, else the text's language when the model is confident."""
    for tag in _header_string(_raw_value(message, "content-language"), None).split(","):
        tag = tag.strip()
        if _BCP47.match(tag) and len(tag) <= 35:
            return tag
    sample = text[:3000]
    if sum(1 for char in sample if char.isalpha()) < _LANGUAGE_MIN_LETTERS:
        return None
    ranking = _language_model().rank(sample)
    language, confidence = ranking[0]
    if language in _CHINESE:
        # The model tells Mandarin from Wu and Cantonese by a few characters;
        # for the complainant's language they are one.
        language, confidence = "zh", sum(p for name, p in ranking if name in _CHINESE)
    if confidence >= _LANGUAGE_CONFIDENCE and language != _NO_LANGUAGE and _BCP47.match(language):
        return language
    return None


# --------------------------------------------------------------------------- parse

_FIELD_NAME = re.compile(rb"^[!-9;-~]+[ \t]*:")
_MAIL_FIELDS = frozenset(
    {b"from", b"sender", b"to", b"cc", b"date", b"subject", b"message-id", b"received", b"return-path", b"mime-version",
     b"reply-to", b"delivered-to", b"content-type", b"in-reply-to", b"references"}
)  # fmt: skip
_HEADER_SCAN_LIMIT = 256 * 1024


def _check_is_mail(raw: bytes) -> None:
    """Refuse what is not a message at all; anything with a plausible header section is read, however odd."""
    if not raw.strip():
        raise InvalidMessage("empty message")
    head = raw[:_HEADER_SCAN_LIMIT]
    if head.startswith(b"From "):
        head = head.partition(b"\n")[2]  # an mbox separator line
    header = re.split(rb"\r?\n\r?\n", head, maxsplit=1)[0]
    lines = header.split(b"\n")
    if not _FIELD_NAME.match(lines[0]):
        raise InvalidMessage("not an email message: it does not start with a header field")
    if b"\x00" in header:
        raise InvalidMessage("not an email message: NUL bytes in the header section")
    names = {line.split(b":", 1)[0].strip().lower() for line in lines if _FIELD_NAME.match(line)}
    if not names & _MAIL_FIELDS:
        raise InvalidMessage("not an email message: none of the header fields every message has")


def _charset_hint(message: Message) -> str | None:
    """The first charset the message declares anywhere: the best guess for its undeclared bytes."""
    for index, part in enumerate(message.walk()):
        if index > 200:
            break
        _main, params = _parameters(_literal(_raw_value(part, "content-type") or b"", None))
        charset = params.get("charset", "").strip().lower()
        if _codecs_for(charset) and charset not in ("us-ascii", "ascii", "utf-8", "utf8"):
            return charset
    return None


def parse(raw: bytes, *, envelope_sender: str | None = None) -> ParsedMail:
    """Read one message exactly as received.

    ``envelope_sender`` is SMTP's MAIL FROM ('' for the null sender ``<>``), or
    None when unknown (IMAP: the Return-Path header is used). Raises
    :class:`InvalidMessage` only when the bytes are not a message at all.
    """
    _check_is_mail(raw)
    try:
        return _repaired(_parse(raw, envelope_sender), raw)
    except RecursionError:
        raise InvalidMessage("the message nests its parts too deeply to be read") from None
    except (ValueError, TypeError, LookupError, UnicodeError, AttributeError, IndexError, binascii.Error) as error:
        # A failure here is a bug to fix, not the sender's fault: the channel
        # dead-letters the raw message, and it is replayed once fixed.
        raise InvalidMessage(f"the message could not be read ({type(error).__name__})") from error


def _repaired(parsed: ParsedMail, raw: bytes) -> ParsedMail:
    """Every text the parser made, fit for UTF-8: codecs such as UTF-7 and surrogate-escaped 8-bit bytes leave lone surrogates.

    Text is repaired (one U+FFFD for each); an address or a Message-ID that
    UTF-8 cannot carry is dropped instead, as a repaired one would name
    someone or something else. Without its Message-ID the message is named by
    its bytes, as one that has none: repaired ids of two messages could be
    equal, and the second would be taken for a redelivery of the first. The
    channel keys the spool on that name and stores attachments under their
    names before the record is made.
    """

    def identifier(value: str | None) -> str | None:
        return value if value is None or encodable(value) else None

    message_id = identifier(parsed.message_id)
    channel_message_id = parsed.channel_message_id if encodable(parsed.channel_message_id) else "sha256:" + hashlib.sha256(raw).hexdigest()
    return replace(
        parsed,
        message_id=message_id,
        channel_message_id=channel_message_id,
        sender=identifier(parsed.sender),
        sender_name=repair(parsed.sender_name) if parsed.sender_name is not None else None,
        reply_to=identifier(parsed.reply_to),
        subject=repair(parsed.subject),
        text=repair(parsed.text),
        full_text=repair(parsed.full_text),
        automated=repair(parsed.automated) if parsed.automated is not None else None,
        references=[reference for reference in parsed.references if encodable(reference)],
        attachments=[
            replace(
                attachment,
                filename=repair(attachment.filename) if isinstance(attachment.filename, str) else None,
                content_id=identifier(attachment.content_id),
            )
            for attachment in parsed.attachments
        ],
    )


def _parse(raw: bytes, envelope_sender: str | None) -> ParsedMail:
    message = message_from_bytes(raw, policy=compat32)
    hint = _charset_hint(message)

    subject = _header_text(_raw_value(message, "subject"), hint)
    sender_name, sender = _address(_raw_value(message, "from"), hint)
    if sender is None and not _has(message, "from"):
        sender_name, sender = _address(_raw_value(message, "sender"), hint)
    _reply_name, reply_address = _address(_raw_value(message, "reply-to"), hint)

    body = _Body(hint=hint, linesep=b"\r\n" if b"\r\n" in raw[:_HEADER_SCAN_LIMIT] else b"\n")
    _walk(message, body)
    attachments = [
        replace(attachment, inline=True) if attachment.content_id and attachment.content_id in body.cids else attachment
        for attachment in body.attachments
    ]

    own_text = "\n\n".join(body.own)
    own_text, inline_forward = _split_forwarded(own_text, bool(_FORWARD_SUBJECT.match(subject)))
    forwarded_parts = ([inline_forward] if inline_forward else []) + body.forwarded_text
    forwarded = body.forwarded or inline_forward is not None

    own = _strip_history(own_text)
    if not own and not forwarded_parts:
        own = _tidy(own_text)  # all of it looked like history: better the whole than nothing
    text = _tidy("\n\n".join([own, *(_tidy(part) for part in forwarded_parts)]))
    full_text = _tidy("\n\n".join([own_text, *forwarded_parts]))

    message_id = _message_id(message)
    channel_message_id = message_id or "sha256:" + hashlib.sha256(raw).hexdigest()

    automated = _automated(message, subject, sender, envelope_sender, body.report_type)
    in_reply_to = _ids(_header_string(_raw_value(message, "in-reply-to"), None))
    references = _ids(_header_string(_raw_value(message, "references"), None))
    follows_up = (
        reference_from_message_ids([*in_reply_to, *reversed(references), *body.returned_ids])
        or parse_reference(subject)
        or parse_reference(text)
        or parse_reference(full_text)
    )

    return ParsedMail(
        message_id=message_id,
        channel_message_id=channel_message_id,
        sender=sender,
        sender_name=sender_name,
        reply_to=None if automated else (reply_address or sender),
        subject=subject,
        text=text,
        full_text=full_text,
        language=_language(message, text or subject),
        follows_up=follows_up,
        automated=automated,
        references=_references(message, message_id),
        attachments=attachments,
        forwarded=forwarded,
    )


# --------------------------------------------------------------------------- the record


def to_complaint(
    parsed: ParsedMail,
    raw: bytes,
    *,
    received_at: dt.datetime,
    attachments: list[Attachment],
    origin: dict[str, str],
) -> Complaint:
    """The record of a parsed message; ``attachments`` are the ones the channel stored, in order.

    Whatever the record cannot take after the texts are cut to its limits (a
    ParsedMail not made by :func:`parse`, more attachments than a record
    holds) raises InvalidMessage, for the channel to dead-letter.
    """
    text, text_cut = fit(repair(parsed.text), max_length(Complaint, "text"))
    full_text, full_cut = fit(repair(parsed.full_text) if parsed.full_text != parsed.text else None, max_length(Complaint, "full_text"))
    subject, _subject_cut = fit(repair(parsed.subject) or None, max_length(Complaint, "subject"))
    name, _name_cut = fit(repair(parsed.sender_name) if parsed.sender_name else None, max_length(Complainant, "name"))
    sender = parsed.sender if parsed.sender and encodable(parsed.sender) else None
    email = sender if sender and len(sender) <= max_length(Complainant, "email") else None
    reason, _reason_cut = fit(repair(parsed.automated) if parsed.automated else None, max_length(Flags, "automated_reason"))
    language = parsed.language if parsed.language and _BCP47.fullmatch(parsed.language) else None
    with as_invalid_message():
        return Complaint.derive(
            channel="email",
            channel_message_id=parsed.channel_message_id,
            raw=raw,
            raw_media_type=MEDIA_TYPE,
            received_at=received_at,
            complainant=Complainant(
                name=name,
                email=email,
                preferred_contact="email" if email else None,
                locale=language,
            ),
            subject=subject,
            text=text or "",
            full_text=full_text,
            language=language,
            follows_up=parsed.follows_up,
            attachments=attachments,
            flags=Flags(automated=parsed.automated is not None, automated_reason=reason, truncated=text_cut or full_cut),
            origin=origin,
        )
