"""Contact details checked once: address syntax and phone numbers, with the results of recent ones cached.

Partners, forms and SMS bring the same customers back, and checking an address
(IDNA, Unicode rules) or a phone number (libphonenumber's metadata) costs more
than the rest of a normalisation. The answer for a given input never changes,
so it is kept: pure functions still, with a bounded memory of their results.
Only valid inputs are remembered; an invalid one is checked again each time.
"""

from __future__ import annotations

from functools import lru_cache

import phonenumbers
from email_validator import EmailNotValidError, validate_email

# Entries are a few hundred bytes: the caches stay well under a few MiB per process.
_CACHED = 8192


class NotAPhoneNumber(ValueError):
    """The text is not a phone number, or not a possible one; the message says which, for the sender."""


@lru_cache(maxsize=_CACHED)
def normalized_email(address: str) -> str:
    """The address as email-validator normalises it (syntax only, no DNS); ValueError with its reason if invalid."""
    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError as error:
        raise ValueError(str(error)) from None


@lru_cache(maxsize=_CACHED)
def e164(phone: str, country: str | None = None) -> str:
    """The number in E.164; ``country`` (ISO 3166, any case) reads a national number. Raises NotAPhoneNumber."""
    try:
        number = phonenumbers.parse(phone, country.upper() if country else None)
    except phonenumbers.NumberParseException as error:
        raise NotAPhoneNumber(f"not a phone number: {error}") from None
    if not phonenumbers.is_possible_number(number):
        raise NotAPhoneNumber("not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
