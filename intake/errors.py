"""Failure kinds a channel acts on: retry later, or tell the sender no."""

from __future__ import annotations


class TemporaryFailure(Exception):
    """Nothing was promised; the sender should try again (SMTP 451, HTTP 503, a Telegram retry)."""

    retry_after: float = 5.0


class SpoolFull(TemporaryFailure):
    """The spool holds as much unpublished work as it is allowed to; push back until it drains."""

    retry_after = 30.0


class Rejected(Exception):
    """The message will never be accepted as it is; tell the sender why (SMTP 550, HTTP 4xx)."""


class Suppressed(Rejected):
    """Not sent on purpose (a limit against mail loops and backscatter, a robot's address): recorded as not sent,
    without an error in the log for each one, since a loop would make one per message; the sender that suppresses
    says so in the log once per limit and window."""
