"""The events intake publishes, encoded for Kafka as CloudEvents 1.0 in binary mode.

Binary mode: the record's value is the event's data (JSON), ``content-type``
is the data's media type, and every other attribute travels as a ``ce_<name>``
header in UTF-8. ``ce_id`` is derived, never random, so a resend after an
unknown outcome carries the same id and a consumer can drop the duplicate.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import uuid
from typing import Any

from intake.spool import Event
from intake.twoway import Feedback
from intake.normalizer.record import SCHEMA_ID, Complaint

SPECVERSION = "1.0"
COMPLAINT_RECEIVED = "intake.complaint.received.v1"
COMPLAINT_FOLLOWED_UP = "intake.complaint.followed_up.v1"
COMPLAINT_ACKNOWLEDGED = "intake.complaint.acknowledged.v1"
ACKNOWLEDGEMENT_FAILED = "intake.complaint.acknowledgement_failed.v1"
MESSAGE_DEAD_LETTERED = "intake.message.dead_lettered.v1"
FEEDBACK_RECEIVED = "intake.feedback.received.v1"
REPLY_DELIVERED = "intake.reply.delivered.v1"
REPLY_FAILED = "intake.reply.failed.v1"
COMMAND_REJECTED = "intake.command.rejected.v1"

ACKNOWLEDGEMENT_SCHEMA_ID = "urn:intake:schema:acknowledgement:v1"
DEAD_LETTER_SCHEMA_ID = "urn:intake:schema:dead-letter:v1"
FEEDBACK_SCHEMA_ID = "urn:intake:schema:feedback:v1"
REPLY_OUTCOME_SCHEMA_ID = "urn:intake:schema:reply-outcome:v1"
COMMAND_REJECTED_SCHEMA_ID = "urn:intake:schema:command-rejected:v1"


@functools.lru_cache(maxsize=256)  # one complaint's event, its acknowledgement and the time it was sent share a moment
def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _event(
    *,
    topic: str,
    key: str,
    ce_id: str,
    ce_type: str,
    source: str,
    subject: str,
    time: dt.datetime,
    dataschema: str,
    data: bytes,
) -> Event:
    headers = [
        ("ce_specversion", SPECVERSION),
        ("ce_id", ce_id),
        ("ce_source", source),
        ("ce_type", ce_type),
        ("ce_subject", subject),
        ("ce_time", _rfc3339(time)),
        ("ce_dataschema", dataschema),
        ("content-type", "application/json"),
    ]
    return Event(topic=topic, key=key.encode(), value=data, headers=[(k, v.encode()) for k, v in headers])


def complaint_event(complaint: Complaint, *, topic: str, source: str) -> Event:
    """A new complaint, or a follow-up keyed by the complaint it follows."""
    return _event(
        topic=topic,
        key=complaint.key,
        ce_id=str(complaint.id),
        ce_type=COMPLAINT_FOLLOWED_UP if complaint.follows_up else COMPLAINT_RECEIVED,
        source=f"{source}/{complaint.channel}",
        subject=complaint.reference,
        time=complaint.received_at,
        dataschema=SCHEMA_ID,
        data=complaint.to_json(),
    )


def acknowledgement_event(
    *,
    complaint_id: uuid.UUID,
    reference: str,
    key: str,
    channel: str,
    locale: str,
    sent_at: dt.datetime,
    topic: str,
    source: str,
    failed: str | None = None,
) -> Event:
    """The acknowledgement went out on the channel (or, with ``failed``, never will)."""
    data: dict[str, Any] = {
        "complaint_id": str(complaint_id),
        "reference": reference,
        "channel": channel,
        "locale": locale,
        "sent_at": _rfc3339(sent_at),
    }
    if failed:
        data["error"] = failed
    return _event(
        topic=topic,
        key=key,
        # One acknowledgement per channel it went out on (a form complaint: the page, then email).
        ce_id=str(uuid.uuid5(complaint_id, f"acknowledged:{channel}")),
        ce_type=ACKNOWLEDGEMENT_FAILED if failed else COMPLAINT_ACKNOWLEDGED,
        source=f"{source}/{channel}",
        subject=reference,
        time=sent_at,
        dataschema=ACKNOWLEDGEMENT_SCHEMA_ID,
        data=json.dumps(data).encode(),
    )


def dead_letter_event(
    *,
    spool_key: str,
    complaint_id: uuid.UUID,
    reference: str,
    channel: str,
    error: str,
    raw_sha256: str,
    raw_size: int,
    received_at: dt.datetime,
    topic: str,
    source: str,
) -> Event:
    """A message the normalizer could not turn into a record; its raw bytes stay in the spool for replay."""
    data = {
        "spool_key": spool_key,
        "reference": reference,
        "channel": channel,
        "error": error,
        "raw": {"sha256": raw_sha256, "size": raw_size},
        "received_at": _rfc3339(received_at),
    }
    return _event(
        topic=topic,
        key=reference,
        ce_id=str(uuid.uuid5(complaint_id, "dead-lettered")),
        ce_type=MESSAGE_DEAD_LETTERED,
        source=f"{source}/{channel}",
        subject=reference,
        time=received_at,
        dataschema=DEAD_LETTER_SCHEMA_ID,
        data=json.dumps(data).encode(),
    )


def feedback_event(feedback: Feedback, *, received_at: dt.datetime, topic: str, source: str) -> Event:
    """A complainant's answer to a satisfaction survey (ISO 10004); one event per answer, keyed by the complaint."""
    data: dict[str, Any] = {
        "reference": feedback.reference,
        "survey_id": feedback.survey_id,
        "channel": feedback.channel,
        "scale": "csat-1-5",
        "received_at": _rfc3339(received_at),
    }
    if feedback.score is not None:
        data["score"] = feedback.score
    if feedback.nps is not None:
        data["nps"] = feedback.nps
    if feedback.comment:
        data["comment"] = feedback.comment
    return _event(
        topic=topic,
        key=feedback.reference,
        ce_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:intake:feedback:{feedback.survey_id}:{feedback.answer_id}")),
        ce_type=FEEDBACK_RECEIVED,
        source=f"{source}/{feedback.channel}",
        subject=feedback.reference,
        time=received_at,
        dataschema=FEEDBACK_SCHEMA_ID,
        data=json.dumps(data, ensure_ascii=False).encode(),
    )


def reply_outcome_event(
    *,
    command_id: str,
    reference: str,
    kind: str,
    via: str | None,
    route_channel: str | None,
    at: dt.datetime,
    topic: str,
    source: str,
    provider_id: str | None = None,
    note: str | None = None,
    failed: str | None = None,
) -> Event:
    """What became of one command: delivered on a channel (``intake.reply.delivered.v1``) or, with ``failed``, never will be."""
    data: dict[str, Any] = {"command_id": command_id, "reference": reference, "kind": kind}
    if via:
        data["channel"] = via
    if route_channel:
        data["route_channel"] = route_channel
    if provider_id:
        data["provider_id"] = provider_id
    if note:
        data["note"] = note
    data["failed_at" if failed else "delivered_at"] = _rfc3339(at)
    if failed:
        data["error"] = failed
    return _event(
        topic=topic,
        key=reference,
        # One outcome per command, whichever it is: a retry after an unknown outcome carries the same id.
        ce_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:intake:reply-outcome:{command_id}")),
        ce_type=REPLY_FAILED if failed else REPLY_DELIVERED,
        source=f"{source}/{via or route_channel or 'outbound'}",
        subject=reference,
        time=at,
        dataschema=REPLY_OUTCOME_SCHEMA_ID,
        data=json.dumps(data, ensure_ascii=False).encode(),
    )


def command_rejected_event(
    *,
    dedupe_id: str,
    ce_id: str | None,
    ce_type: str | None,
    reference: str | None,
    reason: str,
    at: dt.datetime,
    topic: str,
    source: str,
) -> Event:
    """A record on the outbound topic intake will not carry out, and why; it names the command, never its content."""
    data: dict[str, Any] = {"reason": reason[:1000], "rejected_at": _rfc3339(at)}
    if ce_id:
        data["command_id"] = ce_id
    if ce_type:
        data["command_type"] = ce_type
    if reference:
        data["reference"] = reference
    headers = [
        ("ce_specversion", SPECVERSION),
        ("ce_id", str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:intake:command-rejected:{dedupe_id}"))),
        ("ce_source", f"{source}/outbound"),
        ("ce_type", COMMAND_REJECTED),
        ("ce_time", _rfc3339(at)),
        ("ce_dataschema", COMMAND_REJECTED_SCHEMA_ID),
        ("content-type", "application/json"),
    ]
    if reference:  # a command whose key is no reference has no subject: the dead-letter topic still tells why
        headers.insert(4, ("ce_subject", reference))
    return Event(
        topic=topic,
        key=(reference or "").encode(),
        value=json.dumps(data, ensure_ascii=False).encode(),
        headers=[(k, v.encode()) for k, v in headers],
    )
