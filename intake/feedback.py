"""Satisfaction survey answers (ISO 10004): signed one-click links for email, and recording an answer once.

An email survey carries one link per score, ``{public_base_url}/survey/<token>?score=N``.
The token names the survey, the complaint and the language, and when it expires;
an HMAC-SHA256 over it means nobody can make one up for a survey they were not
sent. Opening a link never records anything (mail scanners open links); the page
it shows does, when the customer sends it (``intake.channels.status_page``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path

from intake.events import feedback_event
from intake.keys import kept_key
from intake.metrics import Metrics
from intake.twoway import Conversations, Feedback

__all__ = ["KEY_FILE", "SurveyLinks", "observe", "record"]

# Beside the spool, like the web form's CSRF key: links mailed before a restart still open after it.
KEY_FILE = "survey-links.key"
DEFAULT_MAX_AGE = 30 * 24 * 3600.0
# Longer than any token we issue (a ce_id is bounded below): anything longer is not worth decoding.
_MAX_TOKEN_CHARS = 1024
_MAX_SURVEY_ID_CHARS = 200


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SurveyLinks:
    """Signed survey links: callable as ``intake.twoway.SurveyLinks``, ``(survey_id, reference, locale) -> {score: url}``.

    Without a ``public_base_url`` there is nowhere to link to: no links are made, and the
    email asks for a reply with the score instead. Every replica behind one address must
    share the key (the file, on a shared volume, or the same bytes).
    """

    def __init__(
        self,
        key: bytes,
        public_base_url: str | None,
        *,
        max_age_seconds: float = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(key) < 32:
            raise ValueError("a survey link key needs at least 32 bytes")
        if max_age_seconds <= 0:
            raise ValueError("survey links must be valid for some time")
        self._key = key
        self._base = public_base_url.rstrip("/") if public_base_url else None
        self._max_age = max_age_seconds
        self._clock = clock

    @classmethod
    def kept_beside(cls, spool_path: Path, public_base_url: str | None, **options: object) -> SurveyLinks:
        """Links signed with a key generated once and kept in ``survey-links.key`` beside the spool."""
        key = kept_key(
            spool_path.with_name(KEY_FILE),
            event="survey_links_key_generated",
            advice="replicas behind one address must share this file, or links sent by one fail on another",
        )
        return cls(key, public_base_url, **options)  # type: ignore[arg-type]

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def token(self, survey_id: str, reference: str, locale: str) -> str:
        if not survey_id or len(survey_id) > _MAX_SURVEY_ID_CHARS:
            raise ValueError(f"a survey id is 1 to {_MAX_SURVEY_ID_CHARS} characters")
        expires = int(self._clock() + self._max_age)
        payload = _b64(json.dumps([survey_id, reference, locale, expires], separators=(",", ":"), ensure_ascii=False).encode())
        return f"{payload}.{self._mac(payload)}"

    def __call__(self, survey_id: str, reference: str, locale: str) -> dict[int, str]:
        if self._base is None:
            return {}
        token = self.token(survey_id, reference, locale)
        return {score: f"{self._base}/survey/{token}?score={score}" for score in range(1, 6)}

    def verify(self, token: str) -> tuple[str, str, str] | None:
        """``(survey_id, reference, locale)`` of a genuine, unexpired token; None for anything else."""
        if not token or len(token) > _MAX_TOKEN_CHARS:
            return None
        payload, _, mac = token.partition(".")
        if not hmac.compare_digest(self._mac(payload).encode(), mac.encode()):
            return None
        try:
            survey_id, reference, locale, expires = json.loads(_unb64(payload))
        except (ValueError, TypeError, binascii.Error):
            return None  # signed by us yet unreadable: a format of another version
        if not all(isinstance(value, str) for value in (survey_id, reference, locale)) or not isinstance(expires, int):
            return None
        if self._clock() > expires:
            return None
        return survey_id, reference, locale


def _check(feedback: Feedback) -> None:
    if feedback.score is not None and not 1 <= feedback.score <= 5:
        raise ValueError(f"a satisfaction score is 1 to 5, not {feedback.score}")
    if feedback.nps is not None and not 0 <= feedback.nps <= 10:
        raise ValueError(f"a likelihood to recommend is 0 to 10, not {feedback.nps}")
    if feedback.score is None and feedback.nps is None and not feedback.comment:
        raise ValueError("an answer to a survey needs a score, a likelihood to recommend or a comment")
    if not feedback.answer_id:
        raise ValueError("an answer needs its answer_id: it is what keeps a redelivered answer from counting twice")


def observe(metrics: Metrics, feedback: Feedback) -> None:
    """Count an answer recorded for the first time: surveys answered, CSAT and NPS, by channel."""
    if feedback.score is not None:
        # A survey counts as answered once, by its first question; a later NPS press (Telegram) is the same survey.
        metrics.surveys_answered.labels(channel=feedback.channel).inc()
        metrics.csat_score.labels(channel=feedback.channel).observe(feedback.score)
    if feedback.nps is not None:
        metrics.nps_score.labels(channel=feedback.channel).observe(feedback.nps)


async def record(
    conversations: Conversations,
    feedback: Feedback,
    *,
    metrics: Metrics,
    topic: str,
    source: str,
    received_at: dt.datetime,
) -> bool:
    """Store an answer that came outside a message (a Telegram button, the survey page) with its event.

    True if it was recorded now, False if its ``answer_id`` was recorded before (nothing is
    counted twice). ValueError for an answer out of range; the spool's TemporaryFailure passes through.
    """
    _check(feedback)
    event = feedback_event(feedback, received_at=received_at, topic=topic, source=source)
    recorded = await conversations.record_feedback(feedback, event)
    if recorded:
        observe(metrics, feedback)
    return recorded
