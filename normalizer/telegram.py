"""Telegram Update JSON to a complaint record (pure: no I/O, no clock)."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import phonenumbers
from telegram import Message, Update

from intake.attachments import safe_filename
from normalizer.errors import FieldError, InvalidMessage
from normalizer.record import BCP47_PATTERN, Attachment, Channel, Complainant, Complaint, Flags
from normalizer.reference import parse_reference

MEDIA_TYPE = "application/json"
CHANNEL: Channel = "telegram"
# The commands a customer is told about; anything else that starts with "/" is read as words.
COMMANDS = frozenset({"start", "help"})
_COMMAND = re.compile(r"^/([A-Za-z0-9_]{1,32})(?:@[A-Za-z0-9_]{1,64})?(?:\s|$)")
_BCP47 = re.compile(BCP47_PATTERN)

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


def parse(raw: bytes) -> Update:
    """The Update as PTB reads it; InvalidMessage when the bytes are not one."""
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidMessage("the update is not JSON", [FieldError("(body)", str(error))]) from None
    if not isinstance(document, dict) or not isinstance(document.get("update_id"), int):
        raise InvalidMessage("not a Telegram Update", [FieldError("update_id", "an Update is an object with an integer update_id")])
    try:
        return Update.de_json(document, None)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        # PTB raises these for a missing or mistyped required field of some nested object.
        raise InvalidMessage("the Update has invalid fields", [FieldError("(body)", f"{type(error).__name__}: {error}")]) from None


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
                getattr(item, "mime_type", None) or default_type,
                getattr(item, "file_name", None),
                item.file_size,
            )
        )
    return found


def e164(phone: str) -> str | None:
    """A shared contact's number in E.164; Telegram sends it with or without the plus. None when not a number."""
    digits = phone.strip()
    if not digits.startswith("+"):
        digits = "+" + digits
    try:
        number = phonenumbers.parse(digits, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


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
    locale = user.language_code if user.language_code and _BCP47.match(user.language_code) else None
    phone = None
    contact = message.contact
    # Someone else's card is a third party's data, not a way to reach the complainant.
    if contact is not None and contact.user_id is not None and contact.user_id == user.id:
        phone = e164(contact.phone_number)
    return Complainant(
        name=name[:300] or None,
        handle=str(user.id),
        phone=phone,
        preferred_contact="telegram",
        locale=locale,
    )


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
    automated = bool(message.from_user and message.from_user.is_bot)
    origin = {"bot": str(bot_id), "chat_type": message.chat.type}
    return Complaint.derive(
        channel=CHANNEL,
        channel_message_id=channel_message_id(message),
        raw=raw,
        raw_media_type=MEDIA_TYPE,
        received_at=received_at,
        complainant=complainant(message),
        text=message.text or message.caption or "",
        follows_up=follows_up(message, bot_id),
        attachments=attachments,
        flags=Flags(automated=automated, automated_reason="sent by a bot" if automated else None),
        origin=origin,
    )
