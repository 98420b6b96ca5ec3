"""Cached contact checks give the libraries' own answers, and remember only valid inputs."""

from __future__ import annotations

import pytest

from intake.normalizer import contact
from intake.normalizer.webhook import PartnerComplainant, _e164


def test_the_cached_checks_answer_as_the_normalizer_does():
    for address in ("ewa@example.com", "Ewa@EXAMPLE.com", "zofia@bücher.example"):
        assert contact.normalized_email(address) == PartnerComplainant(email=address).email
    for phone, country in (("+48601234567", None), ("601 234 567", "pl"), ("(202) 555-0143", "US")):
        assert contact.e164(phone, country) == _e164(phone, country)


def test_a_repeated_input_is_checked_once():
    contact.normalized_email.cache_clear()
    for _ in range(3):
        contact.normalized_email("repeat@example.com")
    assert contact.normalized_email.cache_info().hits == 2


def test_invalid_inputs_raise_every_time_and_are_not_remembered():
    contact.e164.cache_clear()
    for _ in range(2):
        with pytest.raises(ValueError, match="@-sign"):
            contact.normalized_email("nope")
        with pytest.raises(contact.NotAPhoneNumber, match="not a phone number"):
            contact.e164("call me", None)
    with pytest.raises(contact.NotAPhoneNumber, match="not a possible"):
        contact.e164("+48 12", None)
    assert contact.e164.cache_info().currsize == 0
