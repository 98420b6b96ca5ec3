"""Twilio's posted webhook parameters (SMS, MMS, WhatsApp) to a complaint record (pure: no I/O, no clock).

Twilio posts ``application/x-www-form-urlencoded`` parameters; the raw message
kept in the spool is that body exactly as received, so a record can be
re-derived from it. Twilio adds parameters without notice: everything not read
here stays in the raw body and never makes a message invalid.

Language: Twilio says nothing about the customer's language. The acknowledgement
locale is guessed, in this order:

1. from the text, with fastText's language identification model (176 languages,
   ``intake.normalizer.language``, about 30 us a message): taken when the most
   likely language is one we have a catalog for and it holds at least 90 % of the
   probability shared by those languages; short or ambiguous texts ("ok", "merci")
   fall through;
2. from the sender's number (or Twilio's ``FromCountry``): the country's official
   languages, most widely spoken first (CLDR, through Babel), the first one we have
   a catalog for;
3. else none, and the gateway's default locale is used.

``origin["locale_source"]`` says which of ``text``, ``country`` or ``default`` it was.
"""

from __future__ import annotations

import datetime as dt
import mimetypes
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

import phonenumbers
from babel.languages import get_official_languages
from multidict import MultiDict, MultiDictProxy

from intake.attachments import safe_filename
from intake.normalizer import language
from intake.normalizer.bounds import as_invalid_message, fit, max_length
from intake.normalizer.errors import FieldError, InvalidMessage
from intake.normalizer.record import E164_PATTERN, Attachment, Channel, Complainant, Complaint, Flags
from intake.normalizer.reference import parse_reference

__all__ = [
    "MEDIA_TYPE",
    "Keyword",
    "Media",
    "Params",
    "channel_of",
    "delivery_status",
    "guess_locale",
    "keyword",
    "media",
    "message_sid",
    "parse",
    "to_complaint",
]

MEDIA_TYPE = "application/x-www-form-urlencoded"
WHATSAPP_PREFIX = "whatsapp:"

Params = MultiDict[str] | MultiDictProxy[str]
Keyword = Literal["opt_out", "opt_in", "help"]

# Twilio's default keywords (whole body, any case), which Twilio answers itself on
# SMS: a customer sending one manages their subscription; they are not complaining.
_KEYWORDS: dict[str, Keyword] = {
    **dict.fromkeys(("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"), "opt_out"),
    **dict.fromkeys(("START", "YES", "UNSTOP"), "opt_in"),
    **dict.fromkeys(("HELP", "INFO"), "help"),
}
# With Advanced Opt-Out a Messaging Service tells us which kind of keyword it matched
# (its own, possibly localised, keywords included).
# Stripped from both ends of a body before it is matched: spaces, punctuation, symbols (emoji) as the phone added them.
_AROUND_A_WORD = re.compile(r"^[\W_]+|[\W_]+$")
_OPT_OUT_TYPES: dict[str, Keyword] = {"STOP": "opt_out", "START": "opt_in", "HELP": "help"}

# An inbound message carries SmsStatus=received; anything else is a delivery report.
_INBOUND_STATUSES = frozenset({"received", "receiving"})

_MAX_TEXT = max_length(Complaint, "text")
_MAX_FULL_TEXT = max_length(Complaint, "full_text")
_E164 = re.compile(E164_PATTERN)
_MAX_FIELDS = 1000  # Twilio sends a few dozen; a cap on what a forged body makes us parse
_TEXT_CONFIDENCE = 0.9
_TEXT_MIN_LETTERS = 3


@dataclass(frozen=True)
class Media:
    """One ``MediaUrl{N}`` with its ``MediaContentType{N}``."""

    url: str
    content_type: str

    @property
    def filename(self) -> str:
        """Twilio's media id (the URL's last segment, ``ME…``) with an extension for its type."""
        name = urlsplit(self.url).path.rstrip("/").rpartition("/")[2] or "media"
        extension = mimetypes.guess_extension(self.content_type.split(";")[0].strip()) or ""
        # safe_filename: a forged URL's last segment may be any length and hold any character.
        return safe_filename(name + extension, default="media")


def parse(raw: bytes) -> MultiDict[str]:
    """The posted parameters, repeated ones kept (Twilio's signature covers every value)."""
    try:
        text = raw.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=_MAX_FIELDS, errors="strict")
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidMessage("the body is not UTF-8 form parameters", [FieldError("(body)", str(error))]) from None
    return MultiDict(pairs)


def message_sid(params: Params) -> str | None:
    """Twilio's id of the message; SmsMessageSid/SmsSid are its deprecated spellings."""
    for name in ("MessageSid", "SmsMessageSid", "SmsSid"):
        value = params.get(name, "").strip()
        if value:
            return value
    return None


def delivery_status(params: Params) -> str | None:
    """The status a delivery report carries (sent, delivered, failed, read…); None for an inbound message."""
    status = (params.get("MessageStatus") or params.get("SmsStatus") or "").strip().lower()
    if not status or status in _INBOUND_STATUSES:
        return None
    return status


def keyword(params: Params) -> Keyword | None:
    """The opt-out, opt-in or help keyword this message is, if it is one (whole body, any case)."""
    opt_out_type = params.get("OptOutType", "").strip().upper()
    if opt_out_type in _OPT_OUT_TYPES:
        return _OPT_OUT_TYPES[opt_out_type]
    if _count(params.get("NumMedia")) > 0:
        return None
    return _KEYWORDS.get(_bare_word(params.get("Body", "")))


def _bare_word(body: str) -> str:
    """The body as one keyword would be written: "Stop.", "STOP!", "\u200bstop", full-width "ＳＴＯＰ" and "Stop 🛑" are STOP.

    Phones append punctuation and emoji, keyboards insert zero-width marks and full-width letters: the customer
    asked to stop all the same, and an acknowledgement would be a message after an opt-out.
    """
    if len(body) > 40:  # no keyword is longer; not worth normalising a whole complaint for
        return ""
    word = "".join(char for char in unicodedata.normalize("NFKC", body) if unicodedata.category(char) != "Cf")
    return _AROUND_A_WORD.sub("", word).upper()


def _count(value: str | None) -> int:
    try:
        return max(0, int(value or "0"))
    except ValueError:
        return 0


def channel_of(params: Params) -> Channel:
    """whatsapp for ``whatsapp:`` addresses, mms when media came with it, else sms."""
    sender = params.get("From", "").strip()
    if sender.lower().startswith(WHATSAPP_PREFIX):
        return "whatsapp"
    return "mms" if _count(params.get("NumMedia")) > 0 else "sms"


def _fetchable(url: str) -> bool:
    """An http(s) URL with a host, short enough for the record to point at: what Twilio's media URLs are."""
    if len(url) > max_length(Attachment, "location"):
        return False
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # "http://[": urlsplit refuses it, and so would every caller that looks at the host
        return False


def media(params: Params) -> list[Media]:
    """``MediaUrl{N}`` / ``MediaContentType{N}`` for N below ``NumMedia``, in order.

    A MediaUrl that is no http(s) URL names nothing anyone could fetch: it is
    left out here (the raw body keeps it), so that the channel, which reads
    the host of each before copying it, never meets one.
    """
    listed: list[Media] = []
    for index in range(min(_count(params.get("NumMedia")), 100)):
        url = params.get(f"MediaUrl{index}", "").strip()
        if url and _fetchable(url):
            content_type = params.get(f"MediaContentType{index}", "").strip() or "application/octet-stream"
            listed.append(Media(url=url, content_type=content_type))
    return listed


def _e164(number: phonenumbers.PhoneNumber | None) -> str | None:
    """The number in E.164 as the record takes it, or None ("possible" numbers include some the pattern refuses)."""
    if number is None:
        return None
    formatted = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return formatted if _E164.fullmatch(formatted) else None


def _sender(params: Params) -> tuple[phonenumbers.PhoneNumber | None, str]:
    """The sender's number (parsed, if it is one) and the address as Twilio gave it, prefix removed."""
    sender = params.get("From", "").strip()
    if not sender:
        raise InvalidMessage("no sender", [FieldError("From", "missing")])
    prefix, colon, address = sender.partition(":")
    if colon and prefix.lower() != WHATSAPP_PREFIX.rstrip(":"):
        # messenger:, rcs:…: channels the record has no name for; dead-lettered, not guessed.
        raise InvalidMessage("unsupported sender address", [FieldError("From", f"unsupported address type {prefix!r}")])
    address = address if colon else sender
    try:
        number = phonenumbers.parse(address, None)
    except phonenumbers.NumberParseException:
        return None, address  # a short code or an alphanumeric sender id
    return (number if phonenumbers.is_possible_number(number) else None), address


# Short codes have 3 to 8 digits around the world; sender ids up to 11 letters, digits and spaces, at least one letter.
_SHORT_CODE = re.compile(r"[0-9]{3,8}")
_SENDER_ID = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ._&-]{1,11}")


def _application_sender(address: str) -> str | None:
    """Why an SMS sender is an application rather than a person (None for a phone number).

    Twilio gives a phone number in E.164, with its plus. A short code (``40404``) is leased to an
    application (a bank's codes, a carrier's notices, another company's alerts), and an alphanumeric
    sender id (``DHL``) is one-way: neither is someone with a complaint, and an acknowledgement to one
    either fails or starts a conversation between two robots.
    """
    if _SHORT_CODE.fullmatch(address):
        return "sent from a short code"
    if _SENDER_ID.fullmatch(address):
        return "sent from an alphanumeric sender id"
    return None


def _identifier() -> Callable[[str], list[tuple[str, float]]]:
    return language.model().rank


def warm_up() -> None:
    """Load the language model now rather than on the first message."""
    _identifier()


def _primary(locale: str) -> str:
    return locale.replace("_", "-").split("-")[0].lower()


def _text_language(text: str, locales: Sequence[str]) -> tuple[str | None, str | None]:
    """(the text's language when confident, the supported locale for it when there is one)."""
    text = language.sample(text, _TEXT_MIN_LETTERS)
    if text is None:
        return None, None
    ranking = _identifier()(text)
    best, probability = ranking[0]
    supported = {_primary(locale): locale for locale in locales}
    if best in supported:
        shared = sum(p for language, p in ranking if language in supported)
        if shared > 0 and probability / shared >= _TEXT_CONFIDENCE:
            return best, supported[best]
        return None, None
    # Confidently a language we have no catalog for: worth recording, not for the answer.
    return (best, None) if probability >= 0.8 else (None, None)


def _country_locale(country: str | None, locales: Sequence[str]) -> str | None:
    if not country:
        return None
    supported = {locale.replace("_", "-").lower(): locale for locale in locales}
    for official in get_official_languages(country.upper(), de_facto=True):
        subtags = official.replace("_", "-").lower().split("-")
        while subtags:  # zh_Hant -> zh-hant, then zh
            found = supported.get("-".join(subtags))
            if found is not None:
                return found
            subtags.pop()
    return None


def guess_locale(
    text: str, country: str | None, locales: Sequence[str]
) -> tuple[str | None, str | None, Literal["text", "country", "default"]]:
    """(language of the text, locale to answer in, where that locale came from); see the module docstring."""
    language, locale = _text_language(text, locales)
    if locale is not None:
        return language, locale, "text"
    locale = _country_locale(country, locales)
    return language, locale, "country" if locale is not None else "default"


def _text(params: Params) -> str:
    body = params.get("Body", "")
    if body.strip():
        return body
    # A WhatsApp quick-reply button or a shared location carries its content elsewhere.
    button = params.get("ButtonText", "").strip()
    if button:
        return button
    latitude, longitude = params.get("Latitude", "").strip(), params.get("Longitude", "").strip()
    if latitude and longitude:
        place = " ".join(part for part in (params.get("Label", "").strip(), params.get("Address", "").strip()) if part)
        return f"{place} (geo:{latitude},{longitude})".strip()
    return body


def to_complaint(
    raw: bytes,
    *,
    received_at: dt.datetime,
    locales: Sequence[str],
    stored: Mapping[str, Attachment] | None = None,
) -> Complaint:
    """Turn Twilio's posted body into a record; the id follows from (channel, MessageSid).

    ``locales`` are the locales the gateway can answer in. ``stored`` maps a
    ``MediaUrl`` to the attachment the channel downloaded from it; other media are
    listed with their Twilio URL as location.
    """
    params = parse(raw)
    sid = message_sid(params)
    if sid is None:
        raise InvalidMessage("no MessageSid", [FieldError("MessageSid", "missing")])
    if len(sid) > max_length(Complaint, "channel_message_id"):
        # Twilio's ids are 34 characters; cutting one would merge different messages under one id.
        raise InvalidMessage("MessageSid too long", [FieldError("MessageSid", "longer than any Twilio id")])
    channel = channel_of(params)
    number, address = _sender(params)
    phone = _e164(number)
    country = (phonenumbers.region_code_for_number(number) if number is not None else None) or params.get("FromCountry") or None

    automated = None if channel == "whatsapp" else _application_sender(address)
    whole = _text(params)
    text, truncated = fit(whole, _MAX_TEXT)
    full_text, _ = fit(whole if truncated else None, _MAX_FULL_TEXT)
    language, locale, locale_source = guess_locale(text, country, locales)
    with as_invalid_message():
        if channel == "whatsapp":
            complainant = Complainant(
                name=params.get("ProfileName", "").strip()[:300] or None,
                phone=phone,
                handle=(params.get("WaId", "").strip() or address)[:300],
                preferred_contact="whatsapp",
                locale=locale,
            )
        else:
            complainant = Complainant(
                phone=phone,
                # Without a number (short code, sender id) the address is the only way back.
                handle=None if phone else address[:300] or None,
                preferred_contact="sms",
                locale=locale,
            )

        stored = stored or {}
        attachments = [
            stored.get(item.url)
            or Attachment(filename=item.filename, content_type=item.content_type[: max_length(Attachment, "content_type")], location=item.url)
            for item in media(params)
        ]
        origin = {
            "to": params.get("To", "").strip(),
            "account_sid": params.get("AccountSid", "").strip(),
            "messaging_service_sid": params.get("MessagingServiceSid", "").strip(),
            "num_segments": params.get("NumSegments", "").strip(),
            "forwarded": "true" if params.get("Forwarded", "").lower() == "true" else "",
            "locale_source": locale_source,
        }
        return Complaint.derive(
            channel=channel,
            channel_message_id=sid,
            raw=raw,
            raw_media_type=MEDIA_TYPE,
            received_at=received_at,
            complainant=complainant,
            text=text or "",
            full_text=full_text,
            language=language,
            follows_up=parse_reference(text or ""),
            attachments=attachments,
            flags=Flags(automated=automated is not None, automated_reason=automated, truncated=truncated),
            origin={name: value for name, value in origin.items() if value},
        )
