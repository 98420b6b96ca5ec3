"""What intake tells a complainant after the acknowledgement: a message from the team, a status, a survey.

Composition only, in the complainant's language, like ``intake.acknowledgement``;
delivery is ``intake.delivery``'s. Every function returns an
:class:`~intake.acknowledgement.Acknowledgement`-shaped text: ``subject`` for
email (the reference tag in brackets), ``text`` for an email body or a page,
``short`` for SMS, WhatsApp and Telegram.
"""

from __future__ import annotations

from intake.acknowledgement import Acknowledgement
from intake.i18n import negotiate, text_direction
from intake.twoway import Status, StatusView, Survey

__all__ = [
    "compose_feedback_thanks",
    "compose_message",
    "compose_status",
    "compose_status_answer",
    "compose_status_unknown",
    "compose_survey",
]

# English only for now; the catalogs follow.
_STATUS = {
    "received": "Your complaint {reference} has been received.",
    "in_progress": "Your complaint {reference} is being handled.",
    "responded": "We have responded to your complaint {reference}.",
    "resolved": "Your complaint {reference} has been resolved.",
    "closed": "Your complaint {reference} is closed.",
}


def _text(locale: str, subject: str, text: str, short: str) -> Acknowledgement:
    used = negotiate(locale)
    return Acknowledgement(locale=used, direction=text_direction(used), subject=subject, text=text, short=short)


def compose_message(reference: str, message: str, locale: str) -> Acknowledgement:
    """A message from the team handling the complaint: their words, with the reference to quote."""
    body = f"{message}\n\nReference: {reference}"
    return _text(locale, f"Your complaint [{reference}]", body, body)


def compose_status(reference: str, status: Status, locale: str, *, text: str | None = None) -> Acknowledgement:
    """A status change; ``text`` is downstream's own words, added after the status sentence."""
    sentence = _STATUS[status].format(reference=reference)
    body = f"{sentence}\n\n{text}" if text else sentence
    return _text(locale, f"Your complaint [{reference}]", body, body)


def compose_status_answer(reference: str, view: StatusView | None, locale: str) -> Acknowledgement:
    """The answer to "status <reference>" from the complainant who holds it; ``view`` None: still "received"."""
    return compose_status(reference, view.status if view else "received", locale, text=view.text if view else None)


def compose_status_unknown(locale: str) -> Acknowledgement:
    """The answer to a status request for a reference that is not the asker's, or does not exist: the same words for both."""
    body = "We could not find a complaint with that reference for you. Please check the reference and write again."
    return _text(locale, "Complaint status", body, body)


def compose_survey(reference: str, survey: Survey, locale: str, *, channel: str) -> Acknowledgement:
    """The first question of a survey: CSAT, 1 to 5; by email, one link per score."""
    question = f"How satisfied are you with how we handled your complaint {reference}?"
    if survey.links:
        body = question + "\n\n" + "\n".join(f"{score}: {url}" for score, url in sorted(survey.links.items()))
    else:
        body = f"{question} Reply with a number from 1 (very dissatisfied) to 5 (very satisfied)."
    return _text(locale, f"How did we do? [{reference}]", body, body)


def compose_feedback_thanks(locale: str) -> Acknowledgement:
    body = "Thank you for your feedback."
    return _text(locale, "Thank you", body, body)
