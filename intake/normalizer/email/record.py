"""One message read whole (``parse``) and its complaint record (``to_complaint``)."""

from __future__ import annotations

import binascii
import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field, replace
from email import message_from_bytes
from email.parser import BytesHeaderParser
from email.message import Message
from email.policy import compat32

from intake.normalizer.bounds import as_invalid_message, encodable, fit, max_length, repair
from intake.normalizer.email.charsets import codecs_for
from intake.normalizer.email.headers import (
    FIELD_LINE,
    HEADER_SCAN_LIMIT,
    MAIL_FIELD_NAMES,
    first_mailbox,
    header_string,
    header_text,
    literal,
    parameters,
    raw_value,
    raw_values,
    readable_header_section,
)
from intake.normalizer.email.ids import message_id_of, message_ids_in, reference_from_message_ids, references_of
from intake.normalizer.email.mime import Body, MailAttachment, attached_texts, walk
from intake.normalizer.email.quoting import FORWARD_SUBJECT, split_forwarded, strip_history
from intake.normalizer.email.robots import automated_reason, is_role_address
from intake.normalizer.email.text import tidy
from intake.normalizer.errors import InvalidMessage
from intake.normalizer.language import model as language_model
from intake.normalizer.language import sample as language_sample
from intake.normalizer.record import BCP47_PATTERN, Attachment, Complainant, Complaint, Flags
from intake.normalizer.reference import parse_reference

MEDIA_TYPE = "message/rfc822"


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


def warm_up() -> None:
    """Load the language model now rather than on the first message."""
    language_model()


_LANGUAGE_CONFIDENCE = 0.9
_CHINESE = frozenset({"zh", "wuu", "yue"})
_NO_LANGUAGE = "zxx"  # the model's label for text that is no language (codes, numbers)
_LANGUAGE_MIN_LETTERS = 12
_BCP47 = re.compile(BCP47_PATTERN)


def _language(message: Message, text: str) -> str | None:
    """BCP 47: the sender's Content-Language, else the text's language when the model is confident."""
    for tag in header_string(raw_value(message, "content-language"), None).split(","):
        tag = tag.strip()
        if _BCP47.match(tag) and len(tag) <= 35:
            return tag
    sample = language_sample(text, _LANGUAGE_MIN_LETTERS)
    if sample is None:
        return None
    ranking = language_model().rank(sample)
    language, confidence = ranking[0]
    if language in _CHINESE:
        # The model tells Mandarin from Wu and Cantonese by a few characters;
        # for the complainant's language they are one.
        language, confidence = "zh", sum(p for name, p in ranking if name in _CHINESE)
    if confidence >= _LANGUAGE_CONFIDENCE and language != _NO_LANGUAGE and _BCP47.match(language):
        return language
    return None


# --------------------------------------------------------------------------- parse

def _check_is_mail(raw: bytes) -> None:
    """Refuse what is not a message at all; anything with a plausible header section is read, however odd."""
    if not raw.strip():
        raise InvalidMessage("empty message")
    head = raw[:HEADER_SCAN_LIMIT]
    if head.startswith(b"From "):
        head = head.partition(b"\n")[2]  # an mbox separator line
    header = re.split(rb"\r?\n\r?\n", head, maxsplit=1)[0]
    lines = header.split(b"\n")
    if not FIELD_LINE.match(lines[0]):
        raise InvalidMessage("not an email message: it does not start with a header field")
    if b"\x00" in header:
        raise InvalidMessage("not an email message: NUL bytes in the header section")
    names = {line.split(b":", 1)[0].strip().lower() for line in lines if FIELD_LINE.match(line)}
    if not names & MAIL_FIELD_NAMES:
        raise InvalidMessage("not an email message: none of the header fields every message has")


def _charset_hint(message: Message) -> str | None:
    """The first charset the message declares anywhere: the best guess for its undeclared bytes."""
    for index, part in enumerate(message.walk()):
        if index > 200:
            break
        _main, params = parameters(literal(raw_value(part, "content-type") or b"", None))
        charset = params.get("charset", "").strip().lower()
        if codecs_for(charset) and charset not in ("us-ascii", "ascii", "utf-8", "utf8"):
            return charset
    return None


def find_message_id(raw: bytes) -> str | None:
    """The Message-ID ``parse`` would find, from the header section alone (cheap: the body is not walked)."""
    return message_id_of(BytesHeaderParser(policy=compat32).parsebytes(readable_header_section(raw)))


def parse(raw: bytes, *, envelope_sender: str | None = None) -> ParsedMail:
    """Read one message exactly as received.

    ``envelope_sender`` is SMTP's MAIL FROM ('' for the null sender ``<>``), or
    None when unknown (IMAP: the Return-Path header is used). Raises
    :class:`InvalidMessage` only when the bytes are not a message at all.
    """
    readable = readable_header_section(raw)
    _check_is_mail(readable)
    try:
        return _repaired(_parse(readable, envelope_sender, raw=raw), raw)
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


def _sender(message: Message, hint: str | None) -> tuple[str | None, str | None]:
    """(name, address) of who wrote the mail: the first From that names an address (some mailers write two),
    else Sender, else Reply-To, as mail clients show it; the first name found when no address is."""
    first_name: str | None = None
    for field_name in ("from", "sender", "reply-to"):
        for value in raw_values(message, field_name):
            name, address = first_mailbox(value, hint)
            if address is not None:
                return name or first_name, address
            first_name = first_name or name
    return first_name, None


def _parse(readable: bytes, envelope_sender: str | None, *, raw: bytes) -> ParsedMail:
    """``readable`` is ``raw`` with its header section repaired; ``raw`` names the message."""
    message = message_from_bytes(readable, policy=compat32)
    hint = _charset_hint(message)

    subject = header_text(raw_value(message, "subject"), hint)
    sender_name, sender = _sender(message, hint)
    _reply_name, reply_address = first_mailbox(raw_value(message, "reply-to"), hint)
    if is_role_address(reply_address):
        reply_address = None  # a person's mail whose replies a no-reply address would swallow: answer the person

    body = Body(hint=hint, linesep=b"\r\n" if b"\r\n" in raw[:HEADER_SCAN_LIMIT] else b"\n")
    walk(message, body)
    attachments = [
        replace(attachment, inline=True) if attachment.content_id and attachment.content_id in body.cids else attachment
        for attachment in body.attachments
    ]

    own_text = "\n\n".join(body.own)
    if not own_text.strip() and not body.forwarded_text:
        own_text = "\n\n".join(attached_texts(body))
    own_text, inline_forward = split_forwarded(own_text, bool(FORWARD_SUBJECT.match(subject)))
    forwarded_parts = ([inline_forward] if inline_forward else []) + body.forwarded_text
    forwarded = body.forwarded or inline_forward is not None

    own = strip_history(own_text)
    if not own and not forwarded_parts:
        own = tidy(own_text)  # all of it looked like history: better the whole than nothing
    text = tidy("\n\n".join([own, *(tidy(part) for part in forwarded_parts)]))
    full_text = tidy("\n\n".join([own_text, *forwarded_parts]))

    message_id = message_id_of(message)
    channel_message_id = message_id or "sha256:" + hashlib.sha256(raw).hexdigest()

    automated = automated_reason(message, subject, sender, envelope_sender, body.report_type)
    in_reply_to = message_ids_in(header_string(raw_value(message, "in-reply-to"), None))
    references = message_ids_in(header_string(raw_value(message, "references"), None))
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
        references=references_of(message, message_id),
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
