"""Survey answers recorded: the feedback event and the satisfaction metrics (ISO 10004).

A placeholder for the status engineer's module, with the signature it keeps,
so that the channels that take answers outside a message (a Telegram button)
can record them now.
"""

from __future__ import annotations

import datetime as dt

from intake.events import feedback_event
from intake.metrics import Metrics
from intake.twoway import Conversations, Feedback


async def record(
    conversations: Conversations, feedback: Feedback, *, metrics: Metrics, topic: str, source: str, received_at: dt.datetime
) -> bool:
    """Store ``feedback`` with its ``intake.feedback.received.v1`` event; False if this answer was recorded before.

    A redelivered answer (the same ``answer_id``) is counted once. The survey counts as answered at its
    first question (CSAT); the NPS answer that may follow is a second answer of the same survey.
    """
    event = feedback_event(feedback, received_at=received_at, topic=topic, source=source)
    if not await conversations.record_feedback(feedback, event):
        return False
    if feedback.score is not None:
        metrics.surveys_answered.labels(channel=feedback.channel).inc()
        metrics.csat_score.labels(channel=feedback.channel).observe(feedback.score)
    if feedback.nps is not None:
        metrics.nps_score.labels(channel=feedback.channel).observe(feedback.nps)
    return True
