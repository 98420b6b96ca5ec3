"""Header fields as text: raw values off the wire, RFC 2047 encoded-words, MIME parameters (RFC 2231), mailboxes."""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from email.message import Message
from email.utils import getaddresses

from intake.normalizer.email.charsets import decode
from intake.normalizer.email.text import CONTROLS

_ENCODED_WORD = re.compile(rb"=\?([^?\s]{1,80})\?([bBqQ])\?([^?]*?)\?=")
_FOLD = re.compile(rb"\r?\n(?=[ \t])")


def raw_values(message: Message, name: str) -> list[bytes]:
    """Every value of a header field as bytes off the wire (unfolded, not yet decoded)."""
    return list(_fields(message).get(name.lower(), ()))


def _fields(message: Message) -> dict[str, list[bytes]]:
    """The message's header fields by lower-case name, unfolded bytes, made once per message: a mail's
    normalisation asks for some twenty fields, and each scanned every field. Made again if fields were added or
    removed since."""
    items = message.raw_items()
    count = len(message)
    cached = message.__dict__.get("_intake_fields")
    if cached is not None and cached[0] == count:
        return cached[1]
    fields: dict[str, list[bytes]] = {}
    for key, value in items:
        fields.setdefault(str(key).strip().lower(), []).append(_FOLD.sub(b"", wire_bytes(str(value))).strip())
    message.__dict__["_intake_fields"] = (count, fields)
    return fields


def wire_bytes(text: str) -> bytes:
    """The bytes behind a str the parser made from them (ASCII, raw bytes as surrogate escapes)."""
    try:
        return text.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")  # built in memory, not parsed


def raw_value(message: Message, name: str) -> bytes | None:
    values = raw_values(message, name)
    return values[0] if values else None


def has_field(message: Message, name: str) -> bool:
    return bool(raw_values(message, name))


def header_text(raw: bytes | None, hint: str | None = None) -> str:
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
            pieces.append(decode(bytes(pending), pending_charset, hint, detect=False))
        pending = bytearray()

    position = 0
    for match in _ENCODED_WORD.finditer(raw):
        between = raw[position : match.start()]
        position = match.end()
        word = _word_bytes(match.group(2), match.group(3))
        if word is None:
            flush()
            pieces.append(literal(between + match.group(0), hint))
            previous_encoded = False
            continue
        charset = match.group(1).decode("ascii", "replace").split("*", 1)[0].lower()
        if between.strip(b" \t\r\n") or not previous_encoded:
            flush()
            pieces.append(literal(between, hint))
        elif charset != pending_charset:
            flush()  # RFC 2047 §6.2: the whitespace between encoded-words is not text
        pending_charset = charset
        pending.extend(word)
        previous_encoded = True
    flush()
    pieces.append(literal(raw[position:], hint))
    return " ".join(CONTROLS.sub(" ", "".join(pieces)).split())


def literal(data: bytes, hint: str | None) -> str:
    if not data:
        return ""
    # Short strings defeat statistical detection; try UTF-8 (RFC 6532), the
    # message's own charset, then what is likeliest on the wire.
    return decode(data, None, hint, detect=len(data) >= 24)


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
MEDIA_TYPE_SYNTAX = re.compile(r"[a-z0-9!#$&^_.+-]{1,127}/[a-z0-9!#$&^_.+-]{1,127}")


def header_string(raw: bytes | None, hint: str | None) -> str:
    """A structured header (Content-Type, Content-Disposition) as text, encoded-words left alone."""
    if not raw:
        return ""
    return CONTROLS.sub(" ", literal(raw, hint))


def parameters(value: str) -> tuple[str, dict[str, str]]:
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
                charset, _tag, text = text.split("'", 2)
            data.extend(urllib.parse.unquote_to_bytes(text))
        else:
            data.extend(text.encode("utf-8", "surrogateescape"))
    return decode(bytes(data), charset, detect=False)


_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"\\]+@[^@\s<>()\[\],;:\"\\]+$")


def first_mailbox(raw: bytes | None, hint: str | None) -> tuple[str | None, str | None]:
    """(decoded display name, address with lower-cased domain) of the first mailbox in an address header.

    Mail that breaks RFC 5322 here is common and its sender is still plain to
    see; what Thunderbird and Outlook recover is recovered: an address without
    angle brackets after a name (``Test test@example.com``) and a domain
    written with its final dot (``yahoo.com.``, which relays refuse).
    """
    if not raw:
        return None, None
    value = header_string(raw, hint)
    pairs = getaddresses([value])
    for name, address in pairs:
        cleaned = _mailbox_address(address)
        if cleaned is not None:
            return _display_name(name, hint), cleaned
    found = _ADDR_SPEC.search(value)
    cleaned = _mailbox_address(found.group(0)) if found else None
    if found and cleaned is not None:
        return _display_name(value[: found.start()] + value[found.end() :], hint), cleaned
    # No usable address ("MAILER-DAEMON", "<>", "undisclosed-recipients:;"): a name at most.
    names = [name for name, _address in pairs if name]
    if names:
        return header_text(names[0].encode("utf-8", "surrogateescape"), hint) or None, None
    return None, None


_ADDR_SPEC = re.compile(r"[^@\s<>()\[\],;:\"\\]+@[^@\s<>()\[\],;:\"\\]+")


def _mailbox_address(address: str) -> str | None:
    address = address.strip().strip("<>").strip()
    if not _ADDRESS.match(address):
        return None
    local, domain = address.rsplit("@", 1)
    # "example.com." is the same name in its absolute form (RFC 1034 §3.1); an acknowledgement to it bounces.
    domain = domain.rstrip(".").lower()
    if not domain or domain.startswith("."):
        return None
    return f"{local}@{domain}"


def _display_name(name: str, hint: str | None) -> str | None:
    display = header_text(name.encode("utf-8", "surrogateescape"), hint)
    return display.strip().strip("\"'<>()").strip() or None


# --------------------------------------------------------------------------- a header section as readers see it

FIELD_LINE = re.compile(rb"[!-9;-~]+[ \t]*:")
MAIL_FIELD_NAMES = frozenset(
    {b"from", b"sender", b"to", b"cc", b"date", b"subject", b"message-id", b"received", b"return-path", b"mime-version",
     b"reply-to", b"delivered-to", b"content-type", b"in-reply-to", b"references"}
)  # fmt: skip
HEADER_SCAN_LIMIT = 256 * 1024
_MAX_STRAY_LINES = 3


def readable_header_section(raw: bytes) -> bytes:
    """The message with its header section repaired as mail readers repair it; the body untouched.

    Two breakages end Python's header parsing early and lose sender, subject and
    Message-ID with it. A line in the header that is neither a field nor
    indented (a spam filter's report folded without indentation) is taken as the
    continuation of the field above, as Thunderbird and Dovecot take it, when
    more fields follow it before the blank line; with none after it, it is the
    body of a mail that left out the blank line, as before. And up to three
    stray lines before a full header section (a helpdesk's "---- Original email
    message ----", a line of spaces) are dropped. The raw message is what is
    kept and identified; only the reading changes.
    """
    head_limit = raw[:HEADER_SCAN_LIMIT]
    prefix = b""
    if head_limit.startswith(b"From "):  # an mbox separator line stays what it is
        line, newline, _rest = head_limit.partition(b"\n")
        prefix = line + newline
    start = len(prefix)
    lines = raw[start:HEADER_SCAN_LIMIT].split(b"\n")
    header: list[bytes] = []
    for line in lines:
        if not line.rstrip(b"\r"):
            break
        header.append(line)
    if not header:
        return raw
    fields = [bool(FIELD_LINE.match(line)) for line in header]

    stray = 0
    while stray < len(header) and stray < _MAX_STRAY_LINES and not fields[stray]:
        stray += 1
    if stray and (stray == len(header) or not fields[stray] or not _has_mail_field(header[stray:])):
        stray = 0  # not a header section after all: left for the not-mail check to judge
    if stray == 0 and not fields[0]:
        return raw

    repaired = header[stray:]
    last_field = max(index for index, is_field in enumerate(fields) if is_field) - stray
    mended = False
    for index in range(1, len(repaired)):
        line = repaired[index]
        if line[:1] in (b" ", b"\t") or fields[stray + index]:
            continue
        if index < last_field:
            repaired[index] = b" " + line  # a continuation its writer forgot to indent
            mended = True
        else:
            break  # the body begins here, without its blank line
    if not stray and not mended:
        return raw
    consumed = sum(len(line) + 1 for line in header)  # every header line and its "\n"
    return prefix + b"\n".join(repaired) + b"\n" + raw[start + consumed :]


def _has_mail_field(lines: list[bytes]) -> bool:
    names = {line.split(b":", 1)[0].strip().lower() for line in lines if FIELD_LINE.match(line)}
    return bool(names & MAIL_FIELD_NAMES)
