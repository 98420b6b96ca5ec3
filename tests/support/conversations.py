"""An in-memory ``intake.twoway.Conversations``: what the spool knows of each complaint, for tests of what reads it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from intake.spool import Event
from intake.twoway import AskedSurvey, Feedback, Route, StatusView, Survey


@dataclass
class MemoryConversations:
    """Routes, statuses and surveys by reference; answers kept once per (survey, answer_id), as the spool keeps them.

    ``lookups`` lists every lookup in order, so a test can see that two answers cost the same lookups.
    """

    routes: dict[str, Route] = field(default_factory=dict)
    statuses: dict[str, StatusView] = field(default_factory=dict)
    surveys: dict[str, Survey] = field(default_factory=dict)
    # Whom each reference's survey was sent to (intake.twoway.reply_address), the oldest first.
    asked_of: dict[str, str] = field(default_factory=dict)
    asked_at: dict[str, float] = field(default_factory=dict)  # when each reference's survey was sent; now by default
    answers: dict[tuple[str, str], tuple[Feedback, Event]] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)  # a group's name: the reference its first message became
    lookups: list[str] = field(default_factory=list)

    async def route(self, reference: str) -> Route | None:
        self.lookups.append("route")
        return self.routes.get(reference)

    async def group(self, name: str) -> str | None:
        self.lookups.append("group")
        return self.groups.get(name)

    async def status(self, reference: str) -> StatusView | None:
        self.lookups.append("status")
        return self.statuses.get(reference)

    async def open_survey(self, reference: str) -> Survey | None:
        self.lookups.append("open_survey")
        survey = self.surveys.get(reference)
        if survey is None or any(key[0] == survey.survey_id for key in self.answers):
            return None
        return survey

    async def survey_asked_of(self, asked_of: str, answer_id: str) -> AskedSurvey | None:
        self.lookups.append("survey_asked_of")
        for reference in reversed(list(self.asked_of)):
            survey = self.surveys.get(reference)
            if survey is None or self.asked_of[reference] != asked_of:
                continue
            asked_at = self.asked_at.get(reference, time.time())
            if (survey.survey_id, answer_id) in self.answers:
                return AskedSurvey(reference, survey, answered=True, asked_at=asked_at)
            if not any(key[0] == survey.survey_id for key in self.answers):
                return AskedSurvey(reference, survey, asked_at=asked_at)
        return None

    async def record_feedback(self, feedback: Feedback, event: Event) -> bool:
        key = (feedback.survey_id, feedback.answer_id)
        if key in self.answers:
            return False
        self.answers[key] = (feedback, event)
        return True
