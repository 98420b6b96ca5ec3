"""Acknowledgement text for a received complaint, in the customer's language (composition only, not delivery)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from babel import Locale
from babel.numbers import format_decimal

from intake.i18n import negotiate, text_direction, translations

__all__ = ["Acknowledgement", "compose", "gsm7_segments"]

# Unicode bidi isolates. The reference is Latin letters, digits and hyphens: inside
# Persian or Arabic text the bidi algorithm would otherwise reorder "C-7K3M-9QXA"
# around its hyphens, and a customer quoting it back would quote it wrong.
_LRI, _FSI, _PDI = "\u2066", "\u2068", "\u2069"

# Babel localises separators per numbering system but always writes ASCII digits;
# Persian readers expect ۱۰, not 10. Only the numbers we write are localised: the
# reference stays ASCII because the customer has to type it back.
_DIGITS = {
    "arab": str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"),
    "arabext": str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹"),
}


@dataclass(frozen=True)
class Acknowledgement:
    """What to tell the customer: one text per kind of channel, all in one locale."""

    locale: str  # the locale actually used
    direction: str  # "ltr" / "rtl"
    subject: str  # email subject, reference in brackets
    text: str  # email body / web page: thanks, reference, next steps, how to follow up
    short: str  # SMS / Telegram / webhook answer: fits two SMS segments


def compose(
    reference: str,
    locale: str | Iterable[str] | None,
    *,
    response_days: int = 5,
    organisation: str = "",
    follow_up: bool = False,
    replyable: bool = True,
) -> Acknowledgement:
    """Compose the acknowledgement for ``reference`` in the best locale for ``locale``.

    ``locale`` may be anything :func:`intake.i18n.negotiate` accepts. ``follow_up``
    acknowledges a further message on an existing complaint instead of a new one.
    ``replyable`` says whether a reply to the acknowledgement reaches us (email, SMS,
    WhatsApp, Telegram); on a web page or a partner's screen the text does not invite one.
    ``response_days`` is the promise made to the customer, in working days.
    """
    reference = reference.strip()
    if not reference:
        raise ValueError("an acknowledgement needs a reference")
    if response_days < 1:
        raise ValueError("response_days must be at least 1")

    used = negotiate(locale)
    template = _template(used, response_days, " ".join(organisation.split()), follow_up, replyable)
    return Acknowledgement(
        locale=template.locale,
        direction=template.direction,
        subject=template.subject.replace(_SLOT, reference),
        text=template.text.replace(_SLOT, reference),
        short=template.short.replace(_SLOT, reference),
    )


# Stands for the reference while the text is composed once per (locale, promise):
# composing runs for every complaint received, and only the reference differs.
_SLOT = "\ue000"


@functools.lru_cache(maxsize=512)
def _template(used: str, response_days: int, organisation: str, follow_up: bool, replyable: bool) -> Acknowledgement:
    reference = _SLOT
    direction = text_direction(used)
    catalog = translations(used)
    _ = catalog.gettext
    ngettext = catalog.ngettext

    if direction == "rtl":
        reference = f"{_LRI}{reference}{_PDI}"
        # The organisation's name may be in any script; let its first strong
        # character decide, without disturbing the sentence around it.
        if organisation:
            organisation = f"{_FSI}{organisation}{_PDI}"
    values = {
        "reference": reference,
        "days": _number(response_days, used),
        "organisation": organisation,
    }

    if follow_up:
        subject = _("We have added your message to complaint [{reference}]")
        opening = _("We have added your message to complaint {reference}.")
        short = ngettext(
            "We have added your message to complaint {reference}. We will reply within"
            " {days} working day. Please quote this reference when contacting us.",
            "We have added your message to complaint {reference}. We will reply within"
            " {days} working days. Please quote this reference when contacting us.",
            response_days,
        )
    else:
        subject = _("We have received your complaint [{reference}]")
        opening = _("We have received your complaint. Your reference number is {reference}.")
        short = ngettext(
            "We have received your complaint {reference}. We will reply within"
            " {days} working day. Please quote this reference when contacting us.",
            "We have received your complaint {reference}. We will reply within"
            " {days} working days. Please quote this reference when contacting us.",
            response_days,
        )
    if organisation:
        thanks = _("Thank you for contacting {organisation}.")
    else:
        thanks = _("Thank you for contacting us.")
    next_steps = ngettext(
        "A member of our team will review your complaint and reply to you within"
        " {days} working day.",
        "A member of our team will review your complaint and reply to you within"
        " {days} working days.",
        response_days,
    )
    if replyable:
        quote = _(
            "Please quote {reference} whenever you contact us about this complaint;"
            " simply replying to this message is enough."
        )
    else:
        quote = _("Please quote {reference} whenever you contact us about this complaint.")

    # One sentence per paragraph: joining sentences needs a locale's own spacing
    # rules (Chinese has none), and short paragraphs read well in mail and on a page.
    paragraphs = [thanks, opening, next_steps, quote]
    return Acknowledgement(
        locale=used,
        direction=direction,
        subject=subject.format(**values),
        text="\n\n".join(paragraph.format(**values) for paragraph in paragraphs),
        short=short.format(**values),
    )


def _number(value: int, locale: str) -> str:
    system = Locale.parse(locale).default_numbering_system
    formatted = format_decimal(value, locale=locale, numbering_system=system)
    table = _DIGITS.get(system)
    return formatted.translate(table) if table else formatted


# GSM 03.38 default alphabet (basic table, without ESC) and the extension table,
# whose characters are sent as ESC + char and so cost two septets.
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")


def gsm7_segments(text: str) -> int:
    """How many SMS segments ``text`` takes: GSM-7 160/153 septets, else UCS-2 70/67.

    An empty text still costs one message.
    """
    if all(char in _GSM7_BASIC or char in _GSM7_EXTENSION for char in text):
        costs = [2 if char in _GSM7_EXTENSION else 1 for char in text]
        single, multi = 160, 153
    else:
        # UCS-2 in practice means UTF-16: characters beyond the BMP (emoji) take two units.
        costs = [2 if ord(char) > 0xFFFF else 1 for char in text]
        single, multi = 70, 67
    if sum(costs) <= single:
        return 1
    # Concatenated segments lose room to the UDH, and an escape pair or a surrogate
    # pair is never split across two segments, so pack greedily rather than divide.
    segments, used = 1, 0
    for cost in costs:
        if used + cost > multi:
            segments, used = segments + 1, 0
        used += cost
    return segments
