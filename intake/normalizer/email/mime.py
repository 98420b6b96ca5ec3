"""The MIME walk: which parts are the text, which are attachments, forwards, reports and winmail.dat."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.policy import compat32

from tnefparse import TNEF

from intake.normalizer.email.charsets import decode
from intake.normalizer.email.headers import MEDIA_TYPE_SYNTAX, header_string, header_text, parameters, raw_value, wire_bytes
from intake.normalizer.email.html import html_charset, html_to_text
from intake.normalizer.email.ids import message_ids_in
from intake.normalizer.email.text import CONTROLS


@dataclass(frozen=True)
class MailAttachment:
    """One attachment as found in the message; the channel stores the bytes and lists the result on the record."""

    filename: str | None  # decoded (RFC 2231 / 2047), not yet made safe (the store does that)
    content_type: str
    data: bytes
    inline: bool  # inline image of an HTML body (Content-Disposition inline / referenced by cid)
    content_id: str | None  # without angle brackets, as a cid: URL names it


class _Part:
    """A MIME part's type, parameters and disposition, read once."""

    def __init__(self, message: Message, hint: str | None, default_type: str = "text/plain") -> None:
        self.message = message
        content_type, self.params = parameters(header_string(raw_value(message, "content-type"), hint))
        if not MEDIA_TYPE_SYNTAX.fullmatch(content_type):
            # RFC 2045 §5.2: an unreadable type is text/plain (or the digest default).
            content_type = default_type
        self.content_type = content_type
        self.maintype = content_type.split("/", 1)[0]
        disposition, disposition_params = parameters(header_string(raw_value(message, "content-disposition"), hint))
        self.disposition = disposition
        # Outlook and Gmail put RFC 2047 words inside the quoted name, against RFC 2231: decode them too.
        name = disposition_params.get("filename") or self.params.get("name") or ""
        self.filename = header_text(name.encode("utf-8", "surrogateescape"), hint) or None
        content_id = header_string(raw_value(message, "content-id"), hint).strip().strip("<>").strip()
        self.content_id = content_id or None

    @property
    def is_attachment(self) -> bool:
        if self.disposition == "inline" and self.maintype == "text":
            # Apple Mail, Mutt and Outlook name inline text parts ("msg.txt"); every client shows them as the text.
            return False
        return self.disposition == "attachment" or self.filename is not None


def attached_texts(body: Body) -> list[str]:
    """The text of the text parts filed as attachments: the complaint when the mail has no other text.

    A complaint is never empty while the mail has readable text: some mailers
    send the only text as a ``complaint.txt`` attachment.
    """
    texts = []
    for message, part in body.text_attachments:
        text = _part_text(message, part, body)
        if text.strip():
            texts.append(text)
    return texts


def _payload_bytes(message: Message, linesep: bytes) -> bytes:
    """The decoded body of a part: base64 / quoted-printable / uuencode undone, 8-bit bytes exactly as received."""
    payload = message.get_payload()
    if isinstance(payload, list):
        return _serialized_body(message, linesep)
    if isinstance(payload, str) and header_string(raw_value(message, "content-transfer-encoding"), None).strip().lower() == "base64":
        return _base64_lines(payload)
    try:
        # decode=True is the one call that returns the bytes as received: without
        # it, compat32 re-decodes 8-bit text with the declared charset (or ASCII).
        data = message.get_payload(decode=True)
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        return b""
    return data if isinstance(data, bytes) else b""


_BASE64_LINE = re.compile(rb"[A-Za-z0-9+/]+={0,2}")


def _base64_lines(payload: str) -> bytes:
    """A base64 body decoded line by line, as mail readers decode it: it ends at the first line that is not base64.

    A part whose closing boundary is missing runs into whatever follows (the
    boundary of an outer part, a list footer); Python's decoder then returns the
    base64 itself, or mixes the letters of the junk into the data.
    """
    chunks: list[bytes] = []
    for line in wire_bytes(payload).split(b"\n"):
        line = b"".join(line.split())  # spaces and the CR of CRLF
        if not line:
            continue
        if not _BASE64_LINE.fullmatch(line):
            if chunks:
                break
            continue  # junk before the data (a stray header line)
        chunks.append(line)
        if line.endswith(b"="):
            break  # padding: the data ends here
    data = b"".join(chunks)
    if len(data.rstrip(b"=")) % 4 == 1:
        data = data.rstrip(b"=")[:-1]  # one stray character: the rest still decodes
    try:
        return base64.b64decode(data.rstrip(b"=") + b"=" * (-len(data.rstrip(b"=")) % 4))
    except (binascii.Error, ValueError):
        return b""


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


@dataclass
class Body:
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
    # Text parts filed as attachments, read only when the mail has no other text (see attached_texts).
    text_attachments: list[tuple[Message, _Part]] = field(default_factory=list)


_MAX_DEPTH = 64  # forwards of forwards nest two levels each; hostile nesting stops here
_MAX_PARTS = 1000
_SIGNATURES = frozenset({"application/pgp-signature", "application/pkcs7-signature", "application/x-pkcs7-signature"})
_BODY_TYPES = frozenset({"text/plain", "text/html", "text/enriched", "text/richtext"})


def walk(
    message: Message, body: Body, depth: int = 0, *, default_type: str = "text/plain", texts: list[str] | None = None
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
                walk(child, body, depth + 1, default_type=child_default, texts=texts)
        return
    if part.maintype == "multipart":
        # No boundary found: the parts cannot be told apart, but the text can still be read.
        text = decode(_payload_bytes(message, body.linesep), part.params.get("charset"), body.hint)
        if text.strip():
            texts.append(CONTROLS.sub("", text.replace("\r\n", "\n")))
        return
    if part.content_type in _SIGNATURES:
        return  # a signature of the message, not something the customer attached
    if part.content_type in _BODY_TYPES and not part.is_attachment:
        text = _part_text(message, part, body)
        if text.strip():
            texts.append(text)
        return
    if part.content_type in _BODY_TYPES:
        body.text_attachments.append((message, part))
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


def _part_text(message: Message, part: _Part, body: Body) -> str:
    data = _payload_bytes(message, body.linesep)
    charset = part.params.get("charset")
    if part.content_type == "text/html":
        text = decode(data, charset or html_charset(data), body.hint)
        readable, cids = html_to_text(CONTROLS.sub("", text.replace("\r\n", "\n")))
        body.cids |= cids
        return readable
    text = CONTROLS.sub("", decode(data, charset, body.hint).replace("\r\n", "\n").replace("\r", "\n"))
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


def _alternative(children: list[Message], body: Body, depth: int, texts: list[str]) -> None:
    """Read the plain-text alternative when it says something, else the richest; keep every alternative's attachments."""
    kinds = [_kind(child, body.hint) for child in children]
    chosen: int | None = None
    for index, kind in enumerate(kinds):
        if kind == "plain":
            trial = Body(hint=body.hint, linesep=body.linesep, parts=body.parts)
            walk(children[index], trial, depth + 1)
            if "".join(trial.own).strip():
                chosen = index
                break
    if chosen is None:
        readable = [index for index, kind in enumerate(kinds) if kind]
        chosen = readable[-1] if readable else None
    for index, child in enumerate(children):
        if index == chosen:
            walk(child, body, depth + 1, texts=texts)
        else:
            # Another rendering of the same text; only its inline images and files count.
            walk(child, body, depth + 1, texts=[])


def _related(children: list[Message], part: _Part, body: Body, depth: int, texts: list[str]) -> None:
    start = part.params.get("start", "").strip().strip("<>")
    root = 0
    if start:
        for index, child in enumerate(children):
            if _Part(child, body.hint).content_id == start:
                root = index
                break
    for index, child in enumerate(children):
        walk(child, body, depth + 1, texts=texts if index == root else [])


def _report(children: list[Message], part: _Part, body: Body, depth: int, texts: list[str]) -> None:
    """RFC 6522: the first part is for people; the rest (status, returned message) is kept as attachments."""
    body.report_type = part.params.get("report-type", "").strip().lower() or "unknown"
    for index, child in enumerate(children):
        if index == 0:
            walk(child, body, depth + 1, texts=texts)
            continue
        returned = _Part(child, body.hint)
        payload = child.get_payload()
        if returned.content_type in ("message/rfc822", "message/global") and isinstance(payload, list) and payload:
            body.returned_ids.extend(message_ids_in(header_string(raw_value(payload[0], "message-id"), None)))
        elif returned.content_type == "text/rfc822-headers":
            headers = _payload_bytes(child, body.linesep)
            body.returned_ids.extend(
                message_ids_in(header_string(raw_value(message_from_bytes(headers, policy=compat32), "message-id"), None))
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


def _forwarded(inner: Message, part: _Part, body: Body, depth: int) -> None:
    """A message forwarded as an attachment: kept whole, and its text and files read into the complaint."""
    body.forwarded = True
    hint = body.hint
    summary = [
        "---------- Forwarded message ----------",
        f"From: {header_text(raw_value(inner, 'from'), hint)}",
        f"Date: {header_text(raw_value(inner, 'date'), hint)}",
        f"Subject: {header_text(raw_value(inner, 'subject'), hint)}",
        "",
    ]
    inner_texts: list[str] = []
    walk(inner, body, depth + 1, texts=inner_texts)
    body.forwarded_text.append("\n".join(summary) + "\n" + "\n\n".join(inner_texts))
    subject = header_text(raw_value(inner, "subject"), hint)
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


def _tnef(data: bytes, body: Body, texts: list[str]) -> bool:
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
                content_type=tag if MEDIA_TYPE_SYNTAX.fullmatch(tag) else _MEDIA_TYPES.get(extension, "application/octet-stream"),
                data=content,
                inline=False,
                content_id=None,
            )
        )
    if text and not "".join(texts).strip():
        if isinstance(text, bytes):
            text = decode(text.rstrip(b"\x00"), None, body.hint)
        if text.lstrip().lower().startswith(("<html", "<!doctype")):
            text, _cids = html_to_text(text)
        texts.append(CONTROLS.sub("", text.replace("\r\n", "\n")))
    return True
