"""Raw email (RFC 5322 / MIME) to a complaint record (pure: no I/O, no clock).

The SMTP listener and the IMAP watcher hand the bytes exactly as received to
:func:`parse`; the channel stores the attachments it returns and builds the
record with :func:`to_complaint`. Real mail is messy: every step here reads
what clients actually send (wrong charset labels, raw 8-bit headers, HTML-only
bodies, winmail.dat) and degrades to something readable instead of failing.
Only bytes that are not a message at all raise :class:`InvalidMessage`.

One module per concern, in the order a message goes through them:
``headers`` (header fields, encoded-words, MIME parameters, mailboxes),
``charsets`` (bytes to text), ``mime`` (the walk over the parts), ``html``
(HTML bodies to text), ``quoting`` (quoted history and signatures),
``robots`` (machine-sent mail), ``ids`` (Message-IDs, ours and theirs) and
``record`` (``parse`` and ``to_complaint``).
"""

from intake.normalizer.email.ids import our_message_id, reference_from_message_ids
from intake.normalizer.email.mime import MailAttachment
from intake.normalizer.email.record import MEDIA_TYPE, ParsedMail, find_message_id, parse, to_complaint, warm_up
from intake.normalizer.email.robots import is_role_address

__all__ = [
    "MEDIA_TYPE",
    "MailAttachment",
    "ParsedMail",
    "is_role_address",
    "our_message_id",
    "find_message_id",
    "parse",
    "reference_from_message_ids",
    "to_complaint",
    "warm_up",
]
