"""Mail sent by machines (RFC 3834 and the helpdesks' filter set): recorded, never answered."""

from __future__ import annotations

import re
from email.message import Message

from intake.normalizer.email.headers import has_field, header_string, raw_value, raw_values

_OUT_OF_OFFICE_SUBJECT = re.compile(
    r"^\s*(automatic reply|auto(matic)?[- ]?reply|autoreply|auto[- ]response|out of (the )?office|away from (the )?office|"
    r"on vacation|vacation reply|abwesenheitsnotiz|automatische antwort|abwesend|außer haus|nicht im büro|"
    r"r[ée]ponse automatique|absence du bureau|absent du bureau|en cong[ée]s?|"
    r"respuesta autom[áa]tica|fuera de la oficina|ausente|"
    r"odpowiedź automatyczna|automatyczna odpowiedź|poza biurem|nieobecność|"
    r"automatisch antwoord|afwezig|niet aanwezig|buiten kantoor|"
    r"risposta automatica|fuori sede|fuori ufficio|resposta autom[áa]tica|fora do escrit[óo]rio|"
    r"automatická odpověď|mimo kancelář|автоответ|автоматический ответ|自动回复|自動応答|自動返信)(\b|$|[:：])",
    re.IGNORECASE,
)
_ROBOTS = re.compile(r"(?:^|[\s<\"'])(mailer-daemon|postmaster)(?:@|>|$|\s)", re.IGNORECASE)
# Local parts of addresses that belong to a role or a program, never to a person with a complaint: the
# no-reply family, list managers' addresses (Mailman's -request, -bounces, -owner..., Majordomo's owner-),
# RFC 2142's mailbox names for programs, announcement robots, and the Unix accounts cron and daemons mail as.
# Mail from them is recorded; an acknowledgement to them answers a robot, or a stranger whose address a
# robot or a forger put there (backscatter).
_ROLE_LOCAL_PART = re.compile(
    r"(?:.*[-_.])?(?:no|do[-_.]?not|dont)[-_.]?reply(?:[-_.+].*)?"
    r"|.+-(?:request|bounces?|owner|admin|confirm|join|leave|subscribe|unsubscribe)(?:\+.*)?"
    r"|owner-.+|bounces?(?:[-+].*)?"
    r"|mailer|mailer-daemon|mail-daemon|postmaster|majordomo|listserv|listproc|mailman|internet-drafts|rfc-editor"
    r"|root|daemon|nobody|cron|oracle|www-data|apache|nginx|postgres|mysql|uucp|news",
    re.IGNORECASE,
)


def is_role_address(address: str | None) -> bool:
    """Whether an address belongs to a role or a program (no-reply, a list's -request, mailer-daemon, cron's root)."""
    if not address or "@" not in address:
        return False
    local = address.strip().strip("<>").rsplit("@", 1)[0].strip('"')
    return bool(_ROLE_LOCAL_PART.fullmatch(local))


_REPORTS = {
    "delivery-status": "bounce (delivery-status report)",
    "disposition-notification": "read receipt (disposition-notification report)",
}


def automated_reason(message: Message, subject: str, sender: str | None, envelope_sender: str | None, report: str | None) -> str | None:
    """Why this message was sent by a machine (RFC 3834 §2, CHANNEL_RULES), None for a person.

    The most telling reason first: a bounce is also from a null sender.
    """
    if report is not None:
        return _REPORTS.get(report, f"report ({report[:40]})")
    auto_submitted = header_string(raw_value(message, "auto-submitted"), None).split(";")[0].strip().lower()
    if auto_submitted and auto_submitted != "no":
        return f"Auto-Submitted: {auto_submitted[:60]}"
    if envelope_sender is not None:
        if not envelope_sender.strip().strip("<>").strip():
            return "null sender"
    elif any(not value.strip().strip(b"<>").strip() for value in raw_values(message, "return-path")):
        return "null sender"
    for address in (envelope_sender, sender, header_string(raw_value(message, "from"), None)):
        robot = _ROBOTS.search(address or "")
        if robot:
            return "MAILER-DAEMON" if robot.group(1).lower() == "mailer-daemon" else "postmaster"
    if is_role_address(sender):
        return f"role address ({(sender or '').rsplit('@', 1)[0][:60]})"
    for name in ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress", "X-Loop"):
        if has_field(message, name):
            return name
    list_fields = [str(key).strip() for key, _value in message.raw_items() if str(key).strip().lower().startswith("list-")]
    if list_fields:
        return "List-Id" if any(name.lower() == "list-id" for name in list_fields) else list_fields[0][:60]
    precedence = header_string(raw_value(message, "precedence"), None).strip().lower()
    if precedence in ("bulk", "list", "junk"):
        return f"Precedence: {precedence}"
    if _OUT_OF_OFFICE_SUBJECT.match(subject):
        return "out-of-office subject"
    return None
