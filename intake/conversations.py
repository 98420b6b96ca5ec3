"""What every worker's spool knows of a complaint's conversation, read as one (``intake serve --workers N``).

Each worker takes complaints into its own spool, and records there how to
reach the complainant (the route). Commands from the outbound topic are
consumed in worker 0 only, so the statuses and surveys they bring live in
worker 0's spool; an answer to a survey is recorded by whichever worker the
customer's message reached. ``SharedConversations`` is the
``intake.twoway.Conversations`` a worker uses: its own spool first, then the
others' files, opened read-only (SQLite in WAL mode lets other processes read
while the owner writes). What it finds is merged:

- a route: the one recorded with the complaint, with the address and time of
  the complainant's latest message on any worker (a follow-up on Telegram
  names the message to reply under; an SMS reopens WhatsApp's window);
- a status: the newest any spool has;
- a survey: the newest asked, with each part answered on any worker counted
  as answered, so that a score given on one worker is not asked again by
  another and an answer redelivered to another worker is recorded once;
- a survey found by whom it asked (a bare score by SMS names no complaint):
  the newest still waiting for its score on every worker, or the one this
  very answer was recorded for on any worker (a redelivery, not recorded
  again).

Writes stay in the worker's own spool, in the transaction of what causes them.
An answer given twice at the same instant on two workers may be recorded on
both; the ``answer_id`` in its event lets a consumer see that.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from intake.spool import (
    Event,
    RouteRow,
    Spool,
    SurveyRow,
    answer_seen,
    answers_given,
    awaiting_score,
    group_reference,
    open_survey_of,
    route_row,
    status_view,
    survey_rows,
    surveys_asked_of,
)
from intake.twoway import AskedSurvey, Feedback, Route, StatusView, Survey

log = logging.getLogger("intake.conversations")
T = TypeVar("T")


class SharedConversations:
    """``intake.twoway.Conversations`` over this worker's ``spool`` and the spool files at ``others``."""

    def __init__(self, spool: Spool, others: Iterable[Path]) -> None:
        self._spool = spool
        self._others = [Path(path) for path in others]
        self._connections: dict[Path, sqlite3.Connection] = {}
        self._lock = threading.Lock()
        self._unreadable: set[Path] = set()

    # --- reading the other spools -------------------------------------------------------------

    def _connection(self, path: Path) -> sqlite3.Connection | None:
        conn = self._connections.get(path)
        if conn is None:
            if not path.exists():  # that worker has not started yet: it knows nothing
                return None
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=5)
            conn.execute("PRAGMA busy_timeout=5000")
            self._connections[path] = conn
        return conn

    async def _elsewhere(self, query: Callable[[sqlite3.Connection], T]) -> list[T]:
        """``query`` on every other spool that can be read; one that cannot is skipped and said once."""

        def run() -> list[T]:
            found = []
            with self._lock:
                for path in self._others:
                    try:
                        conn = self._connection(path)
                        if conn is not None:
                            found.append(query(conn))
                            self._unreadable.discard(path)
                    except sqlite3.Error as error:
                        self._connections.pop(path, None)
                        if path not in self._unreadable:
                            self._unreadable.add(path)
                            log.warning(
                                "another worker's spool could not be read",
                                extra={"event": "conversations_unreadable", "spool": path.name, "error": type(error).__name__},
                            )
            return found

        return await asyncio.to_thread(run)

    # --- intake.twoway.Conversations -------------------------------------------------------------

    async def route(self, reference: str) -> Route | None:
        own = await self._spool._read(lambda conn: route_row(conn, reference))
        rows = [row for row in [own, *await self._elsewhere(lambda conn: route_row(conn, reference))] if row is not None]
        return merge_routes(rows)

    async def group(self, name: str) -> str | None:
        own = await self._spool._read(lambda conn: group_reference(conn, name))
        if own is not None:
            return own
        return next((found for found in await self._elsewhere(lambda conn: group_reference(conn, name)) if found), None)

    async def status(self, reference: str) -> StatusView | None:
        own = await self._spool._read(lambda conn: status_view(conn, reference))
        views = [view for view in [own, *await self._elsewhere(lambda conn: status_view(conn, reference))] if view is not None]
        return max(views, key=lambda view: view.updated_at or 0.0, default=None)

    async def open_survey(self, reference: str) -> Survey | None:
        return open_survey_of(await self._survey_rows(reference))

    async def survey_asked_of(self, asked_of: str, answer_id: str) -> AskedSurvey | None:
        # Asked where the commands are (worker 0), answered anywhere: whom it asked first, then every answer to it.
        own = await self._spool._read(lambda conn: surveys_asked_of(conn, asked_of))
        asked = [*own, *(row for rows in await self._elsewhere(lambda conn: surveys_asked_of(conn, asked_of)) for row in rows)]
        if not asked:
            return None
        references = sorted({row.reference for row in asked})
        survey_ids = sorted({row.survey_id for row in asked})

        def answers(conn: sqlite3.Connection) -> tuple[list[SurveyRow], set[str]]:
            rows = [row for reference in references for row in survey_rows(conn, reference)]
            return rows, answers_given(conn, survey_ids, answer_id)

        found = [await self._spool._read(answers), *await self._elsewhere(answers)]
        rows = [row for of_spool, _ in found for row in of_spool]
        answered = {survey_id for _, given in found for survey_id in given}
        return awaiting_score(asked, rows, answered)

    async def record_feedback(self, feedback: Feedback, event: Event) -> bool:
        if any(await self._elsewhere(lambda conn: answer_seen(conn, feedback.survey_id, feedback.answer_id))):
            return False
        return await self._spool.record_feedback(feedback, event)

    async def _survey_rows(self, reference: str) -> list[SurveyRow]:
        own = await self._spool._read(lambda conn: survey_rows(conn, reference))
        return [*own, *(row for rows in await self._elsewhere(lambda conn: survey_rows(conn, reference)) for row in rows)]

    def close(self) -> None:
        with self._lock:
            for conn in self._connections.values():
                conn.close()
            self._connections.clear()


def merge_routes(rows: list[RouteRow]) -> Route | None:
    """The route recorded with the complaint (the oldest row), with the address and time of its latest message."""
    if not rows:
        return None
    first = min(rows, key=lambda row: row.created_at).route
    latest = max(rows, key=lambda row: row.route.last_inbound_at).route
    address = latest.address if latest.channel == first.channel else first.address
    return Route(channel=first.channel, address=address, locale=first.locale, last_inbound_at=latest.last_inbound_at, contacts=first.contacts)
