"""What intake tells a complainant after the acknowledgement: a message from the team, a status, a survey.

Composition only, in the complainant's language, like ``intake.acknowledgement``;
delivery is ``intake.delivery``'s. Every function returns an
:class:`~intake.acknowledgement.Acknowledgement`-shaped text: ``subject`` for
email (the reference tag in brackets), ``text`` for an email body or a page,
``short`` for SMS, WhatsApp and Telegram. ``short`` fits two SMS segments in
every locale as long as the team's own words are short: the status and survey
texts are written tersely for that reason.
"""

from __future__ import annotations

from collections.abc import Callable

from intake.acknowledgement import Acknowledgement
from intake.acknowledgement import _number as localized_number
from intake.i18n import negotiate, text_direction, translations
from intake.twoway import STATUSES, Status, StatusView, Survey

__all__ = [
    "compose_feedback_thanks",
    "compose_message",
    "compose_status",
    "compose_status_answer",
    "compose_status_unknown",
    "compose_survey",
    "compose_survey_comment",
    "compose_survey_nps",
    "score_label",
]

# Unicode bidi isolates, as in intake.acknowledgement: inside Persian or Arabic text the
# reference would otherwise be reordered around its hyphens and quoted back wrong.
_LRI, _PDI = "\u2066", "\u2069"


def N_(message: str) -> str:
    """Marks a message for extraction (pybabel's default keywords); it is translated where it is used."""
    return message


_STATUS: dict[str, str] = {
    "received": N_("Your complaint {reference} has been received."),
    "in_progress": N_("Your complaint {reference} is being handled."),
    "responded": N_("We have responded to your complaint {reference}."),
    "resolved": N_("Your complaint {reference} has been resolved."),
    "closed": N_("Your complaint {reference} is closed."),
}

# ISO 10004's verbal anchors of the five-point scale, for email links and the survey page.
_SCORES: dict[int, str] = {
    1: N_("Very dissatisfied"),
    2: N_("Dissatisfied"),
    3: N_("Neither satisfied nor dissatisfied"),
    4: N_("Satisfied"),
    5: N_("Very satisfied"),
}

# What a reply by SMS, WhatsApp or email may carry, by (nps, comment) asked: kept short, the
# question and this line must fit two SMS segments even in UCS-2 (134 characters).
_REPLY_WITH: dict[tuple[bool, bool], str] = {
    (True, True): N_("Reply 1-5 (5 = very satisfied), optionally followed by 0-10 for how likely you are to recommend us, and a comment."),
    (True, False): N_("Reply 1-5 (5 = very satisfied), optionally followed by 0-10 for how likely you are to recommend us."),
    (False, True): N_("Reply 1-5 (5 = very satisfied), optionally followed by a comment."),
    (False, False): N_("Reply 1-5 (5 = very satisfied)."),
}


class _Writer:
    """One locale's catalog and its way of writing a reference into a sentence."""

    def __init__(self, locale: str | None) -> None:
        self.locale = negotiate(locale)
        self.direction = text_direction(self.locale)
        self.gettext: Callable[[str], str] = translations(self.locale).gettext

    def reference(self, reference: str) -> str:
        reference = reference.strip()
        if not reference:
            raise ValueError("a text about a complaint needs its reference")
        return f"{_LRI}{reference}{_PDI}" if self.direction == "rtl" else reference

    def __call__(self, message: str, **values: str) -> str:
        return self.gettext(message).format(**values)

    def compose(self, subject: str, paragraphs: list[str], short: str | None = None) -> Acknowledgement:
        # One sentence per paragraph, as in the acknowledgement: joining sentences needs each locale's own spacing.
        # The short text puts them on lines of their own, which every script reads the same way.
        kept = [paragraph for paragraph in paragraphs if paragraph]
        return Acknowledgement(
            locale=self.locale,
            direction=self.direction,
            subject=subject,
            text="\n\n".join(kept),
            short=short if short is not None else "\n".join(kept),
        )


def compose_message(reference: str, message: str, locale: str, *, replyable: bool = True) -> Acknowledgement:
    """A message from the team handling the complaint: their words, with the reference to quote.

    ``replyable`` says whether a reply to it reaches us; where it does not (a partner's screen), the message
    does not invite one.
    """
    _ = _Writer(locale)
    shown = _.reference(reference)
    subject = _("Your complaint [{reference}]", reference=shown)
    if replyable:
        quote = _("To answer, reply to this message. Your reference is {reference}.", reference=shown)
    else:
        quote = _("Your reference is {reference}.", reference=shown)
    return _.compose(subject, [message.strip(), quote])


def compose_status(reference: str, status: Status, locale: str, *, text: str | None = None) -> Acknowledgement:
    """A status change; ``text`` is downstream's own words, added after the status sentence."""
    if status not in _STATUS:
        raise ValueError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
    _ = _Writer(locale)
    shown = _.reference(reference)
    subject = _("Your complaint [{reference}]", reference=shown)
    return _.compose(subject, [_(_STATUS[status], reference=shown), (text or "").strip()])


def compose_status_answer(reference: str, view: StatusView | None, locale: str) -> Acknowledgement:
    """The answer to "status <reference>" from the complainant who holds it; ``view`` None: still "received"."""
    return compose_status(reference, view.status if view else "received", locale, text=view.text if view else None)


def compose_status_unknown(locale: str) -> Acknowledgement:
    """The answer to a status request for a reference that is not the asker's, or does not exist: the same words for both."""
    _ = _Writer(locale)
    body = _("We could not find a complaint with that reference for you. Please check the reference and write again.")
    return _.compose(_("Complaint status"), [body])


def compose_survey(reference: str, survey: Survey, locale: str, *, channel: str) -> Acknowledgement:
    """The first question of a survey: CSAT, 1 to 5.

    Telegram: buttons follow the text, so it only says to choose. Email with ``survey.links``:
    one link per score, each opening the survey page. Anything else (SMS, WhatsApp, email
    without links): the customer replies with the score, then optionally NPS and a comment.
    """
    _ = _Writer(locale)
    shown = _.reference(reference)
    subject = _("How did we do? [{reference}]", reference=shown)
    question = _("How satisfied are you with how we handled your complaint {reference}?", reference=shown)
    reply = _(_REPLY_WITH[(survey.nps, survey.comment)])
    if channel == "telegram":
        return _.compose(subject, [question, _("Choose a score below, from 1 (very dissatisfied) to 5 (very satisfied).")])
    if survey.links:
        lines = [
            # The link on a line of its own, without isolates: mail clients find its ends, and a lone URL reads left to right.
            f"{localized_number(score, _.locale)} – {score_label(score, _.locale)}\n{url}"
            for score, url in sorted(survey.links.items())
        ]
        intro = _("Choose a score by opening one of these links; on the page that opens you can also tell us more.")
        # A reply with a digit is understood too, which is what the short text offers if it is all that is shown.
        return _.compose(subject, [question, intro, *lines], short="\n".join([question, reply]))
    return _.compose(subject, [question, reply])


def compose_survey_nps(locale: str) -> Acknowledgement:
    """The survey's optional second question (NPS, 0 to 10), for channels that ask it on its own (Telegram)."""
    _ = _Writer(locale)
    question = _("How likely are you to recommend us to a friend or colleague, from 0 (not at all likely) to 10 (extremely likely)?")
    return _.compose(_("How did we do?"), [question])


def compose_survey_comment(locale: str) -> Acknowledgement:
    """The survey's last, optional step: a comment in the customer's words (Telegram asks it on its own)."""
    _ = _Writer(locale)
    return _.compose(_("How did we do?"), [_("Is there anything you would like to tell us? Reply with a comment, or skip this step.")])


def score_label(score: int, locale: str) -> str:
    """The words for a CSAT score (1 "Very dissatisfied" to 5 "Very satisfied"), for links, buttons and the page."""
    if score not in _SCORES:
        raise ValueError(f"a satisfaction score is 1 to 5, not {score!r}")
    return _Writer(locale)(_SCORES[score])


def compose_feedback_thanks(locale: str) -> Acknowledgement:
    """The answer to a survey answer, on whichever channel it came."""
    _ = _Writer(locale)
    thanks = _("Thank you for your feedback.")
    return _.compose(thanks, [thanks])
