"""The contract with downstream consumers as an AsyncAPI 3.0 document: the topics, the CloudEvents headers, the payloads.

Built from the configuration (topic names, brokers, partitions) and the JSON
Schemas shipped in ``intake/normalizer/schema``, so the document a consumer reads is
the one this gateway runs with; ``intake asyncapi`` prints it.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

from intake import commands, events
from intake.config import Settings
from intake.normalizer.reference import REFERENCE_PATTERN
from intake.requests import STATUS_REQUESTED

# JSON Schema 2020-12, which the shipped schemas are written in (AsyncAPI 3 takes any format that names itself).
_SCHEMA_FORMAT = "application/schema+json;version=2020-12"
_KAFKA_BINDING = "0.5.0"


def _shipped(name: str) -> dict[str, Any]:
    return json.loads(files("intake.normalizer").joinpath(f"schema/{name}").read_text(encoding="utf-8"))


def _headers(types: list[str], dataschema: str) -> dict[str, Any]:
    """The CloudEvents 1.0 attributes of the Kafka protocol binding, binary mode: one ``ce_`` header each."""
    return {
        "type": "object",
        "required": ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_subject", "ce_time", "ce_dataschema", "content-type"],
        "properties": {
            "ce_specversion": {"type": "string", "const": events.SPECVERSION},
            "ce_id": {
                "type": "string",
                "format": "uuid",
                "description": "Stable across redeliveries and resends: deduplicate on it to see each event once.",
            },
            "ce_source": {"type": "string", "description": "The configured source prefix and the channel, e.g. urn:intake/email."},
            "ce_type": {"type": "string", "enum": types},
            "ce_subject": {"type": "string", "pattern": REFERENCE_PATTERN, "description": "The complaint's reference."},
            "ce_time": {"type": "string", "format": "date-time"},
            "ce_dataschema": {"type": "string", "const": dataschema},
            "content-type": {"type": "string", "const": "application/json"},
        },
    }


def _command_headers() -> dict[str, Any]:
    """What a command must carry: fewer attributes than intake's own events, which say more than a command needs."""
    return {
        "type": "object",
        "required": ["ce_specversion", "ce_id", "ce_type"],
        "properties": {
            "ce_specversion": {"type": "string", "const": events.SPECVERSION},
            "ce_id": {
                "type": "string",
                "minLength": 1,
                "maxLength": commands.MAX_CE_ID,
                "description": "Unique per command and the same on every resend: a command seen again is not delivered again.",
            },
            "ce_type": {"type": "string", "enum": list(commands.MODELS)},
            "ce_source": {"type": "string", "description": "Who sent it, e.g. urn:case-management."},
            "ce_time": {"type": "string", "format": "date-time"},
            "content-type": {"type": "string", "const": "application/json"},
        },
    }


def _message(
    name: str, title: str, summary: str, ce_types: list[str], schema: dict[str, Any], *, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "title": title,
        "summary": summary,
        "contentType": "application/json",
        "headers": headers or _headers(ce_types, schema["$id"]),
        "payload": {"schemaFormat": _SCHEMA_FORMAT, "schema": schema},
        "bindings": {
            "kafka": {
                "key": {
                    "type": "string",
                    "pattern": REFERENCE_PATTERN,
                    "description": "The reference of the complaint, or for a follow-up of the complaint it follows: "
                    "a complaint and everything after it share a partition, in order.",
                },
                "bindingVersion": _KAFKA_BINDING,
            }
        },
    }


def document(settings: Settings) -> dict[str, Any]:
    kafka = settings.kafka
    complaint, acknowledgement, dead_letter = (_shipped(n) for n in ("complaint.v1.json", "acknowledgement.v1.json", "dead-letter.v1.json"))
    command, outcome, rejected = (_shipped(n) for n in ("command.v1.json", "reply-outcome.v1.json", "command-rejected.v1.json"))
    feedback, status_request = (_shipped(n) for n in ("feedback.v1.json", "status-request.v1.json"))
    rejected_headers = _headers([events.COMMAND_REJECTED], rejected["$id"])
    # A rejected command's key may be no reference at all: then it has no subject.
    rejected_headers["required"] = [name for name in rejected_headers["required"] if name != "ce_subject"]
    topic_binding = {"partitions": kafka.partitions, "bindingVersion": _KAFKA_BINDING}
    if kafka.replication_factor > 0:
        topic_binding["replicas"] = kafka.replication_factor
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "intake complaint events",
            "version": "1.0.0",
            "description": "What the intake gateway publishes: every complaint from every channel as one versioned record, "
            "what the complainant was told, and what could not be read. CloudEvents 1.0 in Kafka binary mode. Delivery is "
            "at least once: deduplicate on the ce_id header.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": kafka.bootstrap_servers.split(",")[0].strip(),
                "protocol": "kafka-secure" if kafka.security_protocol != "PLAINTEXT" else "kafka",
                "description": f"bootstrap servers: {kafka.bootstrap_servers}",
            }
        },
        "channels": {
            "complaints": {
                "address": kafka.topic,
                "description": "Complaints, follow-ups and acknowledgements, keyed by reference.",
                "messages": {
                    "complaint": _message(
                        "complaint",
                        "A complaint or a follow-up",
                        "A new complaint (received) or a later message on an existing one (followed_up, keyed by the complaint it follows).",
                        [events.COMPLAINT_RECEIVED, events.COMPLAINT_FOLLOWED_UP],
                        complaint,
                    ),
                    "acknowledgement": _message(
                        "acknowledgement",
                        "An acknowledgement sent, or failed for good",
                        "The complainant was answered on a channel with the reference, or could not be.",
                        [events.COMPLAINT_ACKNOWLEDGED, events.ACKNOWLEDGEMENT_FAILED],
                        acknowledgement,
                    ),
                    "replyOutcome": _message(
                        "replyOutcome",
                        "A command delivered to the complainant, or failed for good",
                        "What the complainant actually received of a command from the outbound topic, on which channel.",
                        [events.REPLY_DELIVERED, events.REPLY_FAILED],
                        outcome,
                    ),
                    "feedback": _message(
                        "feedback",
                        "A survey answered (ISO 10004)",
                        "A complainant's score (CSAT 1-5), NPS (0-10) or comment, on the channel they were asked on or the survey page.",
                        [events.FEEDBACK_RECEIVED],
                        feedback,
                    ),
                    "statusRequest": _message(
                        "statusRequest",
                        "A customer asked for a complaint's status",
                        "Answered on their channel; known says whether they held the reference (never what they wrote).",
                        [STATUS_REQUESTED],
                        status_request,
                    ),
                },
                "bindings": {"kafka": {"topic": kafka.topic, **topic_binding}},
            },
            "deadLetters": {
                "address": kafka.dead_letter_topic,
                "description": "Messages kept but not readable as a complaint; the raw bytes stay in the gateway's spool for replay.",
                "messages": {
                    "deadLetter": _message(
                        "deadLetter", "A message that could not be read", "Why, and where its raw bytes are kept.", [events.MESSAGE_DEAD_LETTERED], dead_letter
                    ),
                    "commandRejected": _message(
                        "commandRejected",
                        "An outbound command refused",
                        "Invalid, or for a reference this gateway never received: why, never what it said.",
                        [events.COMMAND_REJECTED],
                        rejected,
                        headers=rejected_headers,
                    ),
                },
                "bindings": {"kafka": {"topic": kafka.dead_letter_topic, **topic_binding}},
            },
            "outboundCommands": {
                "address": kafka.outbound_topic,
                "description": f"Commands from downstream to complainants, keyed by reference, consumed by the group {kafka.outbound_group}: "
                "each is stored before its offset is committed, delivered once (by ce_id) and in order per reference.",
                "messages": {
                    "command": _message(
                        "command",
                        "A message, a status change or a survey for the complainant",
                        "By ce_type: intake.command.message.v1, intake.command.status.v1, intake.command.survey.v1.",
                        list(commands.MODELS),
                        command,
                        headers=_command_headers(),
                    )
                },
                "bindings": {"kafka": {"topic": kafka.outbound_topic, **topic_binding}},
            },
        },
        "operations": {
            "receiveCommands": {
                "action": "receive",
                "channel": {"$ref": "#/channels/outboundCommands"},
                "messages": [{"$ref": "#/channels/outboundCommands/messages/command"}],
            },
            "publishComplaints": {
                "action": "send",
                "channel": {"$ref": "#/channels/complaints"},
                "messages": [
                    {"$ref": "#/channels/complaints/messages/complaint"},
                    {"$ref": "#/channels/complaints/messages/acknowledgement"},
                    {"$ref": "#/channels/complaints/messages/replyOutcome"},
                    {"$ref": "#/channels/complaints/messages/feedback"},
                    {"$ref": "#/channels/complaints/messages/statusRequest"},
                ],
            },
            "publishDeadLetters": {
                "action": "send",
                "channel": {"$ref": "#/channels/deadLetters"},
                "messages": [{"$ref": "#/channels/deadLetters/messages/deadLetter"}, {"$ref": "#/channels/deadLetters/messages/commandRejected"}],
            },
        },
    }
