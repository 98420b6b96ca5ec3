"""The complaint record: deterministic ids, readable references, the shipped schema, partner JSON mapping."""

from __future__ import annotations

import datetime as dt
import json
from importlib.resources import files

import jsonschema
import pytest

from intake.normalizer import webhook
from intake.normalizer.errors import InvalidMessage
from intake.normalizer.record import Complaint, json_schema
from intake.normalizer.reference import REFERENCE_PATTERN, complaint_id, parse_reference, reference_for

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.timezone.utc)


def test_same_message_gets_same_id_and_reference_everywhere():
    assert complaint_id("sms", "SM123") == complaint_id("sms", "SM123")
    assert reference_for("sms", "SM123") == reference_for("sms", "SM123")
    assert reference_for("sms", "SM123") != reference_for("whatsapp", "SM123")
    assert complaint_id("sms", "SM123") != complaint_id("sms", "SM124")


def test_reference_is_short_and_unambiguous_on_the_phone():
    import re

    references = {reference_for("email", f"<{n}@example.com>") for n in range(2000)}
    assert len(references) == 2000
    for reference in references:
        assert re.fullmatch(REFERENCE_PATTERN, reference)
        assert not set(reference[2:]) & set("ILOU")


def test_reference_found_in_text_as_customers_type_it():
    reference = reference_for("email", "<a@b>")
    assert parse_reference(f"Re: your complaint [{reference}]") == reference
    misread = reference.lower().replace("0", "o").replace("1", "l")
    assert parse_reference(f"my ref is {misread}, thanks") == reference
    assert parse_reference("call me on 601-234-567") is None


def test_shipped_schema_is_the_one_generated_from_the_type():
    shipped = json.loads(files("intake.normalizer").joinpath("schema/complaint.v1.json").read_text())
    assert shipped == json_schema(), "run `intake schema > intake/normalizer/schema/complaint.v1.json` after changing the record"


def test_partner_json_becomes_a_valid_record():
    raw = json.dumps(
        {
            "complainant": {"name": "Ewa", "email": "Ewa@Example.COM", "phone": "601 234 567", "country": "PL", "locale": "pl-PL"},
            "subject": "Broken parcel",
            "text": "It arrived broken.",
            "follows_up": "c-7k3m-9qxa",
            "attachments": [{"filename": "photo.jpg", "content_type": "image/jpeg", "size": 1200, "url": "https://partner.example/p.jpg"}],
        }
    ).encode()
    complaint = webhook.to_complaint(raw, partner="acme", idempotency_key="k-1", received_at=NOW)
    assert complaint.complainant.phone == "+48601234567"
    assert complaint.complainant.email == "Ewa@example.com"
    assert complaint.follows_up == "C-7K3M-9QXA"
    assert complaint.key == "C-7K3M-9QXA"
    assert complaint.raw.size == len(raw)
    assert complaint.reference == reference_for("webhook", "acme/k-1")
    jsonschema.validate(json.loads(complaint.to_json()), json_schema())


def test_invalid_partner_json_names_every_wrong_field():
    raw = json.dumps({"complainant": {"email": "not-an-address", "preferred_contact": "pigeon"}, "txt": "typo"}).encode()
    with pytest.raises(InvalidMessage) as caught:
        webhook.to_complaint(raw, partner="acme", idempotency_key="k", received_at=NOW)
    fields = {error.field for error in caught.value.errors}
    assert {"complainant.email", "complainant.preferred_contact", "text", "txt"} <= fields


def test_a_naive_timestamp_is_refused():
    with pytest.raises(ValueError):
        Complaint.derive(channel="web", channel_message_id="x", raw=b"", raw_media_type="text/plain", received_at=dt.datetime(2026, 1, 1), text="t")
