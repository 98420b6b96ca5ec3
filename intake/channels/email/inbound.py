"""One received mail, whichever way it came (SMTP or IMAP): attachments stored, then one spool write.

The channel message id names the mail, not its delivery: the Message-ID and a
digest of the mail as its author wrote it (see ``content_digest``). The same
mail received by SMTP and by IMAP, redelivered through another relay, or found
again after a UIDVALIDITY change is one complaint under one reference; a
different mail that reuses a Message-ID (some mailers do) is a complaint of
its own, not a duplicate answered 250 and dropped. A mail that cannot be
normalised is dead-lettered, never refused or dropped: the sender of a mail
cannot be asked to fix it.

SMTP takes the other path, ``receive_later``: the raw mail is stored in the
spool's inbox, the listener says 250, and the mail comes back to ``receive``
from the inbox's normaliser, as Postfix queues mail before it processes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import logging
import re
from typing import Any

from intake.channels.email import EmailConfig
from intake.channels.email.reply import acknowledgement_payload
from intake.acknowledgement import Acknowledgement
from intake.attachments import AttachmentStore
from intake.errors import Rejected
from intake.reception import Outcome, Reception, ReplyPayload
from intake.normalizer import email as mail
from intake.normalizer.reference import reference_for
from intake.normalizer.errors import InvalidMessage
from intake.normalizer.record import Attachment, Complaint

log = logging.getLogger("intake.email")

# Header fields the route adds to a mail, not its author: a copy that came another way carries other ones
# and is still the same mail. Matched by name, case-insensitively, wherever they stand in the header.
TRACE_FIELDS = frozenset(
    {
        # RFC 5321 §4.4 / RFC 5322 §3.6.7: the trace proper.
        "received", "return-path",
        # What delivery agents stamp (Postfix, Exim, qmail, Dovecot LDA/LMTP, fetchmail, Gmail's forwarding).
        "delivered-to", "x-original-to", "envelope-to", "x-envelope-from", "x-envelope-to",
        "x-forwarded-to", "x-forwarded-for", "x-received",
        # Verdicts and seals of relays on the way: RFC 8601, RFC 8617 (ARC), RFC 7208 (SPF); a DKIM
        # signature is a function of the content it signs, and a forwarder or a list may add its own.
        "authentication-results", "arc-seal", "arc-message-signature", "arc-authentication-results",
        "received-spf", "dkim-signature",
        # Filters' verdicts.
        "x-virus-scanned", "x-virus-status",
        # mbox stores' bookkeeping, which some IMAP servers show.
        "status", "x-status", "x-keywords", "x-uid", "content-length",
    }
)  # fmt: skip
TRACE_PREFIXES = ("x-spam-",)  # SpamAssassin and rspamd: X-Spam-Status, -Score, -Level, -Flag...

# A header field's first line, as RFC 5322 §2.2 spells it (and "Name :" as old mailers do).
_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")
# A mail this small is identified on the event loop (about 60 us at 700 bytes, 230 at 16 KiB): handing it to a thread
# and back costs more (about 170 us of the loop's time, and a GIL handoff each way). A larger one goes to a thread.
_INLINE_IDENTITY_BYTES = 16 * 1024


def content_digest(raw: bytes) -> str:
    """SHA-256 (hex) of the mail as its author sent it: what differs between two deliveries of it left out.

    Left out: the trace fields (``TRACE_FIELDS``, ``TRACE_PREFIXES``) and an
    mbox ``From `` line; CRLF or LF line ends; whitespace where relays change
    it: header fields unfolded with runs of whitespace made one space (DKIM's
    relaxed header canonicalisation, RFC 6376 §3.4.2), trailing whitespace of
    body lines, empty lines at the end. Everything else counts, byte for byte:
    when in doubt two mails are two complaints, never one lost in the other.
    The header ends at the first empty line; a line in it that is neither
    indented nor a field (broken mail) continues the field above it.
    """
    text = raw.replace(b"\r\n", b"\n")
    if text.startswith(b"From "):  # an mbox separator line, written by the store
        text = text.partition(b"\n")[2]
    if text.startswith(b"\n"):
        head, body = b"", text[1:]
    else:
        head, _, body = text.partition(b"\n\n")
    fields: list[list[bytes]] = []
    for line in head.split(b"\n"):
        if fields and (line[:1] in (b" ", b"\t") or not _FIELD.match(line)):
            fields[-1].append(line)
        else:
            fields.append([line])
    digest = hashlib.sha256()
    for lines in fields:
        name, colon, value = b" ".join(lines).partition(b":")
        name = name.strip().lower()
        key = name.decode("ascii", "replace")
        if colon and (key in TRACE_FIELDS or key.startswith(TRACE_PREFIXES)):
            continue
        digest.update(name + colon + b" ".join(value.split()) + b"\n")
    digest.update(b"\n")
    # Line by line, not with a regular expression: a line of a million spaces must not take quadratic time.
    digest.update(b"\n".join(line.rstrip(b" \t\r") for line in body.split(b"\n")).rstrip(b"\n"))
    return digest.hexdigest()


def channel_message_id(message_id: str | None, raw: bytes) -> str:
    """``<Message-ID> sha256:<content digest>``, or ``sha256:<content digest>`` for a mail without one.

    The Message-ID alone would make a different mail under a reused id a
    duplicate; the digest alone would do for identity, the Message-ID keeps the
    key readable. At most 902 + 72 characters: within the record's 1000.
    """
    digest = f"sha256:{content_digest(raw)}"
    return f"{message_id} {digest}" if message_id else digest


def read(raw: bytes, *, envelope_sender: str | None) -> mail.ParsedMail:
    """The normalizer's reading of a mail, named by ``channel_message_id`` rather than by its Message-ID alone."""
    parsed = mail.parse(raw, envelope_sender=envelope_sender)
    return dataclasses.replace(parsed, channel_message_id=channel_message_id(parsed.message_id, raw))


class Inbound:
    """Turns raw mail into spooled complaints for the SMTP listener and the IMAP watchers."""

    def __init__(self, config: EmailConfig, reception: Reception, attachments: AttachmentStore) -> None:
        self._reception = reception
        self._attachments = attachments
        self._domain = config.relay.domain
        # Never acknowledge a mail from ourselves: our own acknowledgement would come back as a complaint.
        own = {config.relay.from_address, config.relay.envelope_sender}
        own.update(entry for entry in config.smtp.accept if "@" in entry)
        self._own_addresses = {address.lower() for address in own if address}
        reception.normalize_later("email", self._from_inbox)
        reception.replayable("email", self._replay)

    async def receive_later(
        self, raw: bytes, *, received_at: dt.datetime, envelope_sender: str | None, origin: dict[str, str], context: dict[str, Any]
    ) -> str:
        """Store one mail to normalise once it has been answered; the reference it will have. Raises TemporaryFailure
        (SpoolFull included) when it was not stored, or when the attachment store is known to be broken now."""
        self._attachments.check_writable()
        # Known before the mail is normalised: the channel message id needs only its Message-ID and its digest, so the
        # 250 can name the reference the customer will be given (a sender's log then ties the two together).
        def identify() -> str:
            return channel_message_id(mail.find_message_id(raw), raw)

        identity = identify() if len(raw) <= _INLINE_IDENTITY_BYTES else await asyncio.to_thread(identify)
        await self._reception.receive_later(
            channel="email",
            raw=raw,
            received_at=received_at,
            context={"context": context, "origin": origin, "envelope_sender": envelope_sender},
        )
        return reference_for("email", identity)

    async def _from_inbox(self, raw: bytes, received_at: dt.datetime, stored: dict[str, Any], inbox_id: int) -> Outcome:
        return await self.receive(
            raw,
            received_at=received_at,
            envelope_sender=stored["envelope_sender"],
            origin=stored["origin"],
            context=stored["context"],
            inbox_id=inbox_id,
        )

    async def _replay(self, raw: bytes, received_at: dt.datetime, context: dict[str, Any], channel_message_id: str) -> Outcome:
        """A dead letter taken in again: a mail that reads now is acknowledged, as it was not before. Its envelope
        sender was not kept; the mail's own headers say where a reply goes."""
        return await self.receive(raw, received_at=received_at, envelope_sender=None, origin={}, context=context)

    async def receive(
        self,
        raw: bytes,
        *,
        received_at: dt.datetime,
        envelope_sender: str | None,
        origin: dict[str, str],
        context: dict[str, Any],
        cursor: tuple[str, str] | None = None,
        inbox_id: int | None = None,
    ) -> Outcome:
        """Store one mail; raises TemporaryFailure (SpoolFull included) when nothing was stored."""
        try:
            # Parsing a large MIME tree takes a while: off the event loop, which other channels share.
            parsed = await asyncio.to_thread(read, raw, envelope_sender=envelope_sender)
        except InvalidMessage as error:
            return await self._dead_letter(raw, str(error), received_at=received_at, context=context, cursor=cursor, inbox_id=inbox_id)
        except Exception as error:  # a normalizer bug must not make one mail block a mailbox or bounce
            log.error(
                "the email parser failed",
                extra={"event": "email_parser_failed", "error_type": type(error).__name__},
                exc_info=True,
            )
            return await self._dead_letter(
                raw, f"the email parser failed: {type(error).__name__}", received_at=received_at, context=context, cursor=cursor,
                inbox_id=inbox_id,
            )

        stored, skipped = await self._store_attachments(parsed.attachments)
        origin = dict(origin)
        if skipped:
            # The complaint is kept without them; the raw message in the spool still holds every byte.
            origin["attachments_skipped"] = str(skipped)
            origin["attachments_limit"] = f"{self._attachments.max_count} files of at most {self._attachments.max_bytes} bytes"

        recipient = parsed.reply_to  # None when the normalizer found a robot: RFC 3834, never answered
        answerable = recipient is not None and recipient.lower() not in self._own_addresses

        def normalize() -> Complaint:
            try:
                return mail.to_complaint(parsed, raw, received_at=received_at, attachments=stored, origin=origin)
            except InvalidMessage:
                raise
            except Exception as error:  # dead-lettered with the raw message kept, replayable once fixed
                log.error(
                    "the email normalizer failed",
                    extra={"event": "email_normalizer_failed", "error_type": type(error).__name__},
                    exc_info=True,
                )
                raise InvalidMessage(f"the email normalizer failed: {type(error).__name__}") from error

        return await self._reception.receive(
            channel="email",
            channel_message_id=parsed.channel_message_id,
            raw=raw,
            normalize=normalize,
            received_at=received_at,
            ack="reply" if answerable else "none",
            reply_payload=self._reply_payload(parsed, recipient) if answerable else None,
            context=context,
            cursor=cursor,
            dead_letter_invalid=True,
            inbox_id=inbox_id,
            # Where later messages go, threaded under this one; nowhere for a robot.
            route={"to": recipient, "message_id": parsed.message_id, "references": parsed.references, "subject": parsed.subject}
            if answerable
            else None,
        )

    def _reply_payload(self, parsed: mail.ParsedMail, recipient: str | None) -> ReplyPayload:
        assert recipient is not None

        def payload(complaint: Complaint, acknowledgement: Acknowledgement) -> dict[str, Any]:
            return acknowledgement_payload(
                complaint,
                acknowledgement,
                to=recipient,
                in_reply_to=parsed.message_id,
                references=parsed.references,
                domain=self._domain,
            )

        return payload

    async def _store_attachments(self, attachments: list[mail.MailAttachment]) -> tuple[list[Attachment], int]:
        """Store what the limits allow, before the spool write that refers to it; count what was skipped."""
        stored: list[Attachment] = []
        skipped = 0
        for attachment in attachments:
            if len(stored) >= self._attachments.max_count or len(attachment.data) > self._attachments.max_bytes:
                skipped += 1
                continue
            try:
                stored.append(
                    await self._attachments.put(
                        attachment.data, filename=attachment.filename, content_type=attachment.content_type
                    )
                )
            except Rejected:  # the store's own limits, should they differ from the ones checked above
                skipped += 1
        return stored, skipped

    async def _dead_letter(
        self,
        raw: bytes,
        error: str,
        *,
        received_at: dt.datetime,
        context: dict[str, Any],
        cursor: tuple[str, str] | None,
        inbox_id: int | None = None,
    ) -> Outcome:
        def unparseable() -> Complaint:
            raise InvalidMessage(error)

        # Without a parsed Message-ID the content names the message, so a redelivery is still one.
        identity = await asyncio.to_thread(channel_message_id, None, raw)
        return await self._reception.receive(
            channel="email",
            channel_message_id=identity,
            raw=raw,
            normalize=unparseable,
            received_at=received_at,
            ack="none",
            context=context,
            cursor=cursor,
            dead_letter_invalid=True,
            inbox_id=inbox_id,
        )
