"""Telegram Update JSON to a complaint record (pure: no I/O, no clock)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from telegram import Message, Update

from intake.attachments import safe_filename
from intake.normalizer.bounds import as_invalid_message, fit, load_json, max_length
from intake.normalizer.errors import FieldError, InvalidMessage, field_errors
from intake.normalizer.record import BCP47_PATTERN, E164_PATTERN, Attachment, Channel, Complainant, Complaint, Flags
from intake.normalizer.reference import parse_reference

MEDIA_TYPE = "application/json"
CHANNEL: Channel = "telegram"
# The commands a customer is told about; anything else that starts with "/" is read as words.
COMMANDS = frozenset({"start", "help"})
_COMMAND = re.compile(r"^/([A-Za-z0-9_]{1,32})(?:@[A-Za-z0-9_]{1,64})?(?:\s|$)")
_BCP47 = re.compile(BCP47_PATTERN)
_E164 = re.compile(E164_PATTERN)

Kind = Literal["complaint", "command", "ignored"]


@dataclass(frozen=True)
class Classified:
    """What an update is to intake, and why when it is not a complaint (said in logs, never personal)."""

    kind: Kind
    reason: str = ""
    command: str | None = None


@dataclass(frozen=True)
class TelegramFile:
    """A file a message carries, as the Bot API describes it; its bytes stay on Telegram unless downloaded."""

    file_id: str  # this bot's handle for the file: what getFile takes
    file_unique_id: str  # the same for every bot and every resend of the file
    content_type: str
    filename: str | None
    size: int | None

    @property
    def location(self) -> str:
        return f"tg-file:{self.file_id}"


# --- the shape of what is read ---------------------------------------------------------
#
# PTB's de_json trusts the Bot API: it does not check types, and a message
# without a chat, a text that is a number or a date past the year 9999 come out
# as AttributeError, TypeError or OverflowError wherever the field is first
# used, the channel included. Every field intake reads is checked here first,
# strictly (no "5" for 5, no true for 1), within the ranges Telegram uses.

_Id = Annotated[int, Field(strict=True, ge=-(2**63), lt=2**63)]  # Telegram's ids fit a signed 64-bit integer
_Size = Annotated[int, Field(strict=True, ge=0, lt=2**63)]
# Unix seconds: Telegram writes 32-bit dates; anything past that is not from it (and past 9999 not a datetime at all).
_Date = Annotated[int, Field(strict=True, ge=0, lt=2**32)]
_Name = Annotated[str, Field(strict=True)]
_Handle = Annotated[str, Field(strict=True, min_length=1, max_length=1024)]  # file ids, chat types: short in practice


class _Shape(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class _User(_Shape):
    id: _Id
    is_bot: bool
    first_name: _Name
    last_name: _Name | None = None
    language_code: _Name | None = None


class _Chat(_Shape):
    id: _Id
    type: _Handle


class _File(_Shape):
    file_id: _Handle
    file_unique_id: _Handle
    file_size: _Size | None = None
    mime_type: _Name | None = None
    file_name: _Name | None = None


class _PhotoSize(_File):
    width: _Size
    height: _Size


class _Contact(_Shape):
    phone_number: _Name
    first_name: _Name
    user_id: _Id | None = None


class _Quote(_Shape):
    text: _Name


class _Message(_Shape):
    message_id: _Id
    date: _Date
    chat: _Chat
    from_user: _User | None = Field(None, alias="from")
    text: _Name | None = None
    caption: _Name | None = None
    photo: list[_PhotoSize] | None = None
    document: _File | None = None
    audio: _File | None = None
    voice: _File | None = None
    video: _File | None = None
    video_note: _File | None = None
    animation: _File | None = None
    contact: _Contact | None = None
    quote: _Quote | None = None
    reply_to_message: _Message | None = None
    edit_date: _Date | None = None
    is_automatic_forward: bool | None = None


class _Update(_Shape):
    update_id: _Id
    message: _Message | None = None
    edited_message: _Message | None = None


def parse(raw: bytes) -> Update:
    """The Update as PTB reads it; InvalidMessage when the bytes are not one.

    Once this returns, every field that :func:`classify`, :func:`files`,
    :func:`channel_message_id` and :func:`to_complaint` read has the type and
    range they expect: the channel calls them before the record is made.
    """
    document = load_json(raw)
    # type() rather than isinstance(): true is an int to isinstance, and no update_id.
    if not isinstance(document, dict) or type(document.get("update_id")) is not int:
        raise InvalidMessage("not a Telegram Update", [FieldError("update_id", "an Update is an object with an integer update_id")])
    try:
        _Update.model_validate(document)
    except ValidationError as error:
        raise InvalidMessage("the Update has invalid fields", field_errors(error)) from None
    try:
        return Update.de_json(document, None)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, OSError) as error:
        # PTB raises these for a missing or mistyped required field of an object not checked above
        # (an entity, a forward origin); OverflowError and OSError for a date it cannot convert.
        raise InvalidMessage("the Update has invalid fields", [FieldError("(body)", f"{type(error).__name__}: {error}"[:500])]) from None


def classify(update: Update) -> Classified:
    """Complaint, a command to answer, or something to skip (its offset still advances)."""
    message = update.message
    if message is None:
        if update.edited_message is not None:
            # The original was taken in as sent; an edit does not change what was complained about.
            return Classified("ignored", "edited message")
        return Classified("ignored", "not a message")
    name = command(message)
    if name is not None:
        return Classified("command", command=name)
    if not (message.text or message.caption or files(message) or message.contact):
        # Stickers, dice, service messages (members joining, pinned messages): nothing to record.
        return Classified("ignored", "no text, file or contact")
    return Classified("complaint")


def command(message: Message) -> str | None:
    """``start`` for "/start", "/start@our_bot" or a deep link "/start payload"; None for anything else."""
    match = _COMMAND.match(message.text or "")
    if match is None or match.group(1).lower() not in COMMANDS:
        return None
    return match.group(1).lower()


def channel_message_id(message: Message) -> str:
    """(chat, message) names a message for good: webhook and polling redeliveries and a repeated update_id collapse."""
    return f"{message.chat.id}:{message.message_id}"


def files(message: Message) -> list[TelegramFile]:
    """The files worth keeping: the largest size of a photo, and documents, audio, voice and video."""
    found: list[TelegramFile] = []
    if message.photo:
        # Telegram sends every size it made of one photo; the largest is the one the customer took.
        largest = max(message.photo, key=lambda size: (size.width * size.height, size.file_size or 0))
        found.append(TelegramFile(largest.file_id, largest.file_unique_id, "image/jpeg", None, largest.file_size))
    for kind, default_type in (
        ("document", "application/octet-stream"),
        ("audio", "audio/mpeg"),
        ("voice", "audio/ogg"),
        ("video", "video/mp4"),
        ("video_note", "video/mp4"),
        ("animation", "video/mp4"),
    ):
        item = getattr(message, kind)
        if item is None:
            continue
        found.append(
            TelegramFile(
                item.file_id,
                item.file_unique_id,
                _media_type(getattr(item, "mime_type", None), default_type),
                getattr(item, "file_name", None),
                item.file_size,
            )
        )
    return found


def _media_type(declared: str | None, default: str) -> str:
    """The type Telegram names, unless it is longer than the record takes (then it is no media type Telegram knows)."""
    if declared and len(declared) <= max_length(Attachment, "content_type"):
        return declared
    return default


def e164(phone: str) -> str | None:
    """A shared contact's number in E.164; Telegram sends it with or without the plus. None when not a number."""
    digits = phone.strip()
    if not digits.startswith("+"):
        digits = "+" + digits
    try:
        number = phonenumbers.parse(digits, None)
    except phonenumbers.NumberParseException:
        return None
    formatted = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not phonenumbers.is_possible_number(number) or not _E164.fullmatch(formatted):
        return None
    return formatted


def follows_up(message: Message, bot_id: int) -> str | None:
    """The reference this message follows up: a reply to our acknowledgement first, else a reference quoted in it."""
    replied = message.reply_to_message
    if replied is not None and replied.from_user is not None and replied.from_user.id == bot_id:
        found = parse_reference(replied.text or replied.caption or "")
        if found:
            return found
    for text in (message.quote.text if message.quote else None, message.text, message.caption):
        found = parse_reference(text or "")
        if found:
            return found
    return None


def group(message: Message, bot_id: int) -> str | None:
    """The album a message belongs to: Telegram sends each of its photos and files as a message of its own, all with
    one ``media_group_id``, the caption on one of them. None for a message sent alone."""
    if not message.media_group_id:
        return None
    return f"telegram:{bot_id}:{message.chat.id}:{message.media_group_id}"


def complainant(message: Message) -> Complainant:
    """Name, Telegram user id and language; the phone only from a contact the customer shared of themselves.

    The username is left out on purpose: it is a public, changeable handle that
    names a person, so it is personal data that the user id already makes
    unnecessary (it stays in the raw message in the spool).
    """
    user = message.from_user
    if user is None:  # an anonymous group admin or a channel: no person to name
        return Complainant(preferred_contact="telegram")
    name = " ".join(part for part in (user.first_name, user.last_name) if part).strip()
    # fullmatch: match() with $ would let "pl\n" through, which the record refuses.
    locale = user.language_code if user.language_code and _BCP47.fullmatch(user.language_code) else None
    phone = None
    contact = message.contact
    # Someone else's card is a third party's data, not a way to reach the complainant.
    if contact is not None and contact.user_id is not None and contact.user_id == user.id:
        phone = e164(contact.phone_number)
    return Complainant(
        name=name[: max_length(Complainant, "name")] or None,
        handle=str(user.id),
        phone=phone,
        preferred_contact="telegram",
        locale=locale,
    )


# The user Telegram names as the sender of a channel's post forwarded into its linked discussion group ("Telegram",
# is_bot false): a broadcast, never a customer.
TELEGRAM_SERVICE_USER_ID = 777000


def _automated(message: Message) -> str | None:
    """Why the message was posted by a machine or a broadcast rather than a person, None for a person."""
    if message.from_user is not None and message.from_user.is_bot:
        return "sent by a bot"
    if message.is_automatic_forward or (message.from_user is not None and message.from_user.id == TELEGRAM_SERVICE_USER_ID):
        return "a channel's post forwarded to its discussion group"
    return None


def to_complaint(
    raw: bytes,
    *,
    received_at: dt.datetime,
    bot_id: int,
    stored: Mapping[str, Attachment] | None = None,
) -> Complaint:
    """Turn one Update (its JSON as Telegram sent it) into a record.

    ``bot_id`` is our bot's user id (the number before the colon in its token):
    a reply to a message of ours is a follow-up. ``stored`` maps a file's
    ``file_unique_id`` to the attachment already kept in the attachment store;
    other files are described with a ``tg-file:<file_id>`` location.
    """
    update = parse(raw)
    message = update.message
    if message is None or classify(update).kind != "complaint":
        raise InvalidMessage("not a complaint", [FieldError("message", "an Update with a message that has text, a file or a contact")])
    stored = stored or {}
    with as_invalid_message():
        attachments = [
            stored.get(item.file_unique_id)
            or Attachment(
                filename=safe_filename(item.filename) if item.filename else None,
                content_type=item.content_type,
                size=item.size,
                location=item.location,
            )
            for item in files(message)
        ]
        automated = _automated(message)
        # Telegram allows 4096 characters; a longer text was not sent through it, but is kept, flagged, all the same.
        whole = message.text or message.caption or ""
        text, cut = fit(whole, max_length(Complaint, "text"))
        full_text, _ = fit(whole if cut else None, max_length(Complaint, "full_text"))
        origin = {"bot": str(bot_id), "chat_type": message.chat.type}
        return Complaint.derive(
            channel=CHANNEL,
            channel_message_id=channel_message_id(message),
            raw=raw,
            raw_media_type=MEDIA_TYPE,
            received_at=received_at,
            complainant=complainant(message),
            text=text or "",
            full_text=full_text,
            follows_up=follows_up(message, bot_id),
            attachments=attachments,
            flags=Flags(automated=automated is not None, automated_reason=automated, truncated=cut),
            origin=origin,
        )
