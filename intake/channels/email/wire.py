"""An acknowledgement written as the bytes the relay is sent, without the email package's object model.

The email package parses every header it is given back into a token tree, and
folds it again when the message is flattened: about 0.7 ms of CPU for each
acknowledgement, a third of what a mail taken in by SMTP costs in all. An
acknowledgement is made of our own texts and of values already checked, so it
is written here directly, as RFC 5322 and RFC 2047 have it: a header that is
ASCII as it is, a run of words that is not as encoded-words, every line within
78 characters; the text as quoted-printable, 7 bit, so no relay needs 8BITMIME.

What cannot be written as plainly is left to the email package: a right-to-left
text (it gets an HTML alternative), a recipient that is not a plain ASCII
address (an internationalised one needs SMTPUTF8), a value that is not what our
own code makes. ``plain_message`` then returns None and the caller composes it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable

from intake.normalizer.record import BCP47_PATTERN

# A dot-atom local part and a host name: an address the email package would write as it is, with nothing to quote
# or encode. Anything else (a quoted local part, an address literal, non-ASCII) goes the email package's way.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDRESS = re.compile(rf"(?=[^@]{{1,64}}@){_ATOM}(?:\.{_ATOM})*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?\.)+[A-Za-z]{{2,63}}")
_MESSAGE_ID = re.compile(r"<[!-;=?-~]{1,900}>")  # printable ASCII but < and >: what our Message-IDs are made of
_LOCALE = re.compile(BCP47_PATTERN)
_LINE = 78  # RFC 5322 §2.1.1: lines SHOULD be at most 78 characters
# An encoded-word is at most 75 characters (RFC 2047 §2); 42 bytes of UTF-8 make one of 68 ("=?utf-8?b?", 56 of
# base64 without padding, "?="), which fits on the line after "Subject: ".
_WORD_BYTES = 42
CRLF = "\r\n"


def plain_address(address: str) -> bool:
    """Whether ``address`` is an ASCII dot-atom at a host name, short enough for SMTP (RFC 5321 §4.5.3.1)."""
    return len(address) <= 254 and _ADDRESS.fullmatch(address) is not None


def _encoded(text: str) -> list[str]:
    """``text`` as encoded-words (RFC 2047, UTF-8, base64), each within 75 characters, never splitting a character."""
    words, chunk = [], b""
    for char in text:
        encoded = char.encode("utf-8")
        if len(chunk) + len(encoded) > _WORD_BYTES:
            words.append(chunk)
            chunk = b""
        chunk += encoded
    words.append(chunk)
    return [f"=?utf-8?b?{base64.b64encode(word).decode('ascii')}?=" for word in words if word]


def _needs_encoding(word: str) -> bool:
    # A plain word that looks like an encoded-word would be decoded by the reader: it is encoded too.
    return not word.isascii() or "=?" in word or not word.isprintable()


def header(name: str, value: str) -> str:
    """``Name: value`` folded at spaces within 78 characters, runs of words that are not plain ASCII encoded."""
    tokens: list[str] = []
    run: list[str] = []
    for word in value.split(" "):
        if _needs_encoding(word):
            run.append(word)
            continue
        if run:
            # The spaces between the run's words are encoded with them: a reader drops the ones between encoded-words.
            tokens += _encoded(" ".join(run))
            run = []
        if word:
            tokens.append(word)
    if run:
        tokens += _encoded(" ".join(run))
    lines = [f"{name}:"]
    for token in tokens:
        if len(lines[-1]) + 1 + len(token) > _LINE and lines[-1] != f"{name}:":
            lines.append("")
        lines[-1] += " " + token
    return CRLF.join(lines) + CRLF


def body(text: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, the body with CRLF line ends): 7bit for short ASCII lines, else quoted-printable."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if text.isascii() and all(line.isprintable() and len(line) <= _LINE for line in lines):
        return "7bit", (CRLF.join(lines) + CRLF).encode("ascii")
    encoded = binascii.b2a_qp(text.encode("utf-8"), quotetabs=False, istext=True, header=False)
    return "quoted-printable", encoded.replace(b"\n", b"\r\n") + b"\r\n"


def plain_message(
    *,
    from_header: str,
    to: str,
    subject: str,
    date: str,
    message_id: str,
    threading: Iterable[str],
    headers: Iterable[tuple[str, str]],
    locale: str,
    text: str,
) -> bytes | None:
    """A single-part text/plain message in UTF-8, as the bytes the relay is sent; None when it is not that plain.

    ``from_header`` and ``threading`` are whole header lines, already folded; ``headers`` are further ones whose
    values are plain ASCII tokens of ours (Auto-Submitted)."""
    if not plain_address(to) or _MESSAGE_ID.fullmatch(message_id) is None or _LOCALE.fullmatch(locale) is None:
        return None
    if not subject.isprintable():
        return None
    encoding, content = body(text)
    lines = [
        from_header,
        f"To: {to}{CRLF}",
        header("Subject", subject),
        f"Date: {date}{CRLF}",
        f"Message-ID: {message_id}{CRLF}",
        *threading,
        *(f"{name}: {value}{CRLF}" for name, value in headers),
        f'Content-Type: text/plain; charset="utf-8"{CRLF}',
        f"Content-Transfer-Encoding: {encoding}{CRLF}",
        f"MIME-Version: 1.0{CRLF}",
        f"Content-Language: {locale}{CRLF}",
        CRLF,
    ]
    return "".join(lines).encode("ascii") + content
