"""Structured logs that never carry personal data: JSON lines, with addresses and numbers masked.

Code logs events and ids, never message bodies. The filter below is the net
under that rule: an email address or a phone number that slips into a log
line (an exception text quoting its input, say) is masked before it is written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
# Shaped like a phone number: an optional +, then digits with the separators people type.
_PHONE = re.compile(r"(?<![\w.:/-])\+?\(?\d[\d ().-]{5,}\d(?![\w.:/-])")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
# A Telegram bot token (id:secret): the one secret that travels inside URLs.
_BOT_TOKEN = re.compile(r"(?<!\d)\d{6,12}:[A-Za-z0-9_-]{30,}")
_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def _phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    # Dates, times, addresses and counts are not phone numbers; E.164 has 8 to 15 digits.
    if digits < 8 or digits > 15 or _DATE.match(text) or _IPV4.match(text.strip()):
        return text
    return "[phone]"


def redact(text: str) -> str:
    return _PHONE.sub(_phone, _EMAIL.sub("[email]", _BOT_TOKEN.sub("[secret]", text)))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={redact(str(v))}" for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")
        )
        # Only what the record says is redacted: the timestamp the formatter adds is not personal data.
        record.msg, record.args = redact(record.getMessage()), None
        line = super().format(record)
        return line + (f" [{extras}]" if extras else "")


def configure(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every failed connection attempt at ERROR while Kafka is down; our publisher says it once.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL if level != "DEBUG" else logging.DEBUG)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
