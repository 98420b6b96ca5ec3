"""Web form channel: the complaint form customers fill in on the web, its confirmation page and its abuse guards.

``GET /complaint`` serves an HTML form that works without JavaScript, in the
customer's language (``?lang=xx``, else ``Accept-Language``). ``POST
/complaint`` checks, in this order: a per-client rate limit, the Origin, the
size, a signed double-submit CSRF token (hidden field + cookie), a honeypot
field, then every field. A valid submission is spooled through Reception like
any channel's message and the confirmation page is the POST's own answer.

Why no redirect to ``/complaint/received/<reference>``: such a URL would show a
complaint to anyone who guesses or is sent the reference. The answer to the
POST is seen only by whoever sent it, and needs no state to protect. A reload
or a double click re-sends the same submission id (made when the form was
served), which the spool recognises: the same reference, nothing recorded twice.

Several replicas must share ``web_form.csrf_secret``: a form served by one
replica is then accepted by another. Without it each process generates its own.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import datetime as dt
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from aiohttp import BodyPartReader, hdrs, web
from aiohttp.multipart import content_disposition_filename, parse_content_disposition
from babel.units import format_unit
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from intake.channels.email.reply import acknowledgement_payload
from intake.acknowledgement import _number as localized_number
from intake import keys as intake_keys
from intake.errors import TemporaryFailure
from intake.http import BODY_TIMEOUT, STREAM_ERRORS, BodyTooLarge, BodyUnreadable, declared_too_large, read_body
from intake.i18n import SUPPORTED, language_name, negotiate, text_direction, translations
from intake.normalizer import web_form as normalize
from intake.normalizer.errors import FieldError, InvalidMessage
from intake.normalizer.record import Attachment

if TYPE_CHECKING:
    from intake.attachments import AttachmentStore
    from intake.config import AcknowledgementConfig, HttpConfig
    from intake.reception import Outcome, Reception, ReplyPayload
    from intake.replies import ReplySender

log = logging.getLogger("intake.channels.web_form")

_PACKAGE = Path(__file__).resolve().parents[1]
TEMPLATES = _PACKAGE / "templates"
STATIC = _PACKAGE / "static"

PATH = "/complaint"
HONEYPOT = "homepage"  # a name bots fill in and no browser autofills
CSRF_FIELD = "csrf_token"
SUBMISSION_FIELD = "submission_id"
# The text fields of one submission together stay far below this; it bounds what a client can make us hold.
_MAX_FIELD_BYTES = 128 * 1024
_MAX_PARTS = 64
_CHUNK = 64 * 1024

# Pages carry a token and what the customer typed: never cached, never framed, no scripts at all.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Vary": "Accept-Language, Cookie",
}


class WebFormConfig(BaseModel):
    """The ``[web_form]`` section."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Serve the complaint form at /complaint.")
    csrf_secret: SecretStr | None = Field(
        None,
        description="Key of the form's CSRF tokens (at least 32 characters). Unset, one is generated at the first start and "
        "kept beside the spool (web-form-csrf.key), so a restart does not refuse the forms customers are filling in; "
        "set the same value on every replica behind a load balancer, or forms served by one are refused by another.",
    )
    privacy_notice_url: str | None = Field(
        None,
        pattern=r"^(https?://|/)[^\s<>\"]*$",
        description="Your privacy notice (an http(s) URL or a path on this site), linked next to the consent box.",
    )
    form_max_age_seconds: int = Field(12 * 3600, ge=300, description="How long a served form can still be sent.")
    trusted_proxy_hops: int = Field(
        0,
        ge=0,
        le=10,
        description="How many reverse proxies you run in front of the gateway that append the client's address to "
        "X-Forwarded-For: exactly that number, and only when the gateway cannot be reached around them. 0 (the default) "
        "ignores the header, which anyone can write; 1 takes the address the one proxy appended, and so on. Set it higher "
        "than the proxies that append and every client picks its own rate-limit address. Rate limits apply to the address found.",
    )
    rate_limit: int = Field(10, ge=1, description="Form posts one client address may make within rate_window_seconds; more get 429.")
    rate_window_seconds: float = Field(600, gt=0, description="The sliding window of rate_limit.")
    rate_limit_clients: int = Field(100_000, ge=100, description="Client addresses remembered for rate limiting; the oldest are forgotten.")
    max_attachments: int = Field(5, ge=0, description="Files one submission may attach (also bounded by attachments.max_count).")
    max_attachment_megabytes: int = Field(
        10, ge=1, le=1024, description="Largest attached file in MiB, as the form tells customers (also bounded by attachments.max_bytes)."
    )
    default_phone_region: str | None = Field(
        None,
        pattern=r"^[A-Za-z]{2}$",
        description="ISO 3166 country of phone numbers typed without a country code, e.g. PL; unset, the code is required.",
    )


# --- CSRF -------------------------------------------------------------------------


class CsrfTokens:
    """Signed double-submit tokens: ``<issued>.<nonce>.<HMAC>``, in the form and in a cookie, both checked on POST.

    The signature stops a token planted in a cookie by a neighbouring site (which
    could set cookies but not sign them); the issue time bounds a token's life.
    """

    def __init__(self, secret: bytes, max_age: float, clock: Callable[[], float]) -> None:
        self._secret = secret
        self._max_age = max_age
        self._clock = clock

    def _mac(self, message: str) -> str:
        digest = hmac.new(self._secret, message.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self) -> str:
        message = f"{int(self._clock()):x}.{secrets.token_urlsafe(16)}"
        return f"{message}.{self._mac(message)}"

    def age(self, token: str | None) -> float | None:
        """Seconds since a genuine, unexpired token was issued; None for anything else."""
        if not token or len(token) > 200:
            return None
        message, _, mac = token.rpartition(".")
        issued, _, _nonce = message.partition(".")
        if not hmac.compare_digest(self._mac(message), mac):
            return None
        try:
            age = self._clock() - int(issued, 16)
        except ValueError:
            return None
        # A little slack backwards for clocks of replicas that disagree.
        return age if -60 <= age <= self._max_age else None

    def matches(self, form_token: str | None, cookie_token: str | None) -> bool:
        if not form_token or not cookie_token or not hmac.compare_digest(form_token.encode(), cookie_token.encode()):
            return False
        return self.age(form_token) is not None


# --- rate limit -------------------------------------------------------------------


class SlidingWindow:
    """At most ``limit`` hits per client within ``window`` seconds, in memory (each replica counts its own)."""

    def __init__(self, limit: int, window: float, max_clients: int) -> None:
        self._limit = limit
        self._window = window
        self._max_clients = max_clients
        self._hits: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def hit(self, client: str, now: float) -> float | None:
        """Count a hit; None when allowed, else the seconds until the client may try again (refusals do not count)."""
        hits = self._hits.pop(client, None) or collections.deque()
        while hits and hits[0] <= now - self._window:
            hits.popleft()
        self._hits[client] = hits  # most recently seen last: the oldest client is forgotten first
        if len(hits) >= self._limit:
            return max(1.0, hits[0] + self._window - now)
        hits.append(now)
        while len(self._hits) > self._max_clients:
            self._hits.popitem(last=False)
        return None


def kept_key(path: Path) -> bytes:
    """The form's CSRF key, generated once and kept in ``path`` (owner-only), so that it outlives restarts."""
    return intake_keys.kept_key(
        path, event="web_form_csrf_key_generated", advice="set web_form.csrf_secret when running several replicas"
    )


def client_address(request: web.Request, trusted_proxy_hops: int) -> str:
    """Who a request comes from, for rate limiting; an IPv6 client is its /64, which one customer usually holds whole."""
    address = request.remote or ""
    if trusted_proxy_hops:
        forwarded = [hop.strip() for value in request.headers.getall("X-Forwarded-For", []) for hop in value.split(",") if hop.strip()]
        if forwarded:
            # Each trusted proxy appended the address it saw, the nearest last: the entry trusted_proxy_hops from the right
            # is the client as the outermost proxy saw it, and anything further left was written by the client. With fewer
            # entries the request skipped outer proxies, and the leftmost entries may be the client's own: only the
            # rightmost, the nearest proxy's, is surely one a trusted proxy wrote.
            address = forwarded[-trusted_proxy_hops] if len(forwarded) >= trusted_proxy_hops else forwarded[-1]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def page_locale(request: web.Request, default: str, *, preferred: str | None = None) -> str:
    """A page's language: ``?lang=`` if supported, else ``preferred`` (a language known for the visitor), else Accept-Language."""
    fallback = negotiate(request.headers.get("Accept-Language"), default=default)
    if preferred:
        fallback = negotiate(preferred, default=fallback)
    chosen = request.query.get("lang")
    return negotiate(chosen[:35], default=fallback) if chosen else fallback


def cross_origin(request: web.Request, public_origin: str | None) -> bool:
    """A browser names the page a POST comes from; a form on another site must not post in a visitor's name."""
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        return False  # not a browser, or an old one: the CSRF token still has to match
    if origin == "null":
        return True
    if public_origin is not None:
        return origin.rstrip("/").lower() != public_origin
    return urlsplit(origin).netloc.lower() != request.host.lower()


# --- pages ------------------------------------------------------------------------


class Pages:
    """Jinja2 with autoescape and the ``intake`` gettext catalogs; one environment per locale, made on first use."""

    def __init__(self, organisation: str, privacy_notice_url: str | None = None) -> None:
        self._organisation = " ".join(organisation.split())
        self._privacy_notice_url = privacy_notice_url
        self._environments: dict[str, Environment] = {}

    def _environment(self, locale: str) -> Environment:
        environment = self._environments.get(locale)
        if environment is None:
            environment = Environment(
                loader=FileSystemLoader(TEMPLATES),
                autoescape=True,
                extensions=["jinja2.ext.i18n"],
                undefined=StrictUndefined,
                auto_reload=False,  # templates ship with the package; no stat() per page
                trim_blocks=True,
                lstrip_blocks=True,
            )
            environment.install_gettext_translations(translations(locale), newstyle=True)  # type: ignore[attr-defined]
            self._environments[locale] = environment
        return environment

    def render(
        self, template: str, locale: str, *, status: int = 200, headers: Mapping[str, str] | None = None, path: str = PATH, **context: Any
    ) -> web.Response:
        """``template`` in ``locale``; ``path`` is the page the language switch links to (it may carry a query already)."""
        joiner = "&" if "?" in path else "?"
        languages = [
            {
                "code": code,
                "name": language_name(code),
                "direction": text_direction(code),
                "href": f"{path}{joiner}lang={code}",
                "current": code == locale,
            }
            for code in SUPPORTED
        ]
        html = self._environment(locale).get_template(template).render(
            locale=locale,
            direction=text_direction(locale),
            languages=languages,
            organisation=self._organisation,
            privacy_notice_url=self._privacy_notice_url,
            form_url=f"{PATH}?lang={locale}",
            **context,
        )
        response = web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
        response.headers.update(_PAGE_HEADERS)
        response.headers["Content-Language"] = locale
        response.headers.update(headers or {})
        return response


# --- reading a submission ---------------------------------------------------------


@dataclass
class _File:
    filename: str
    data: bytes  # at most the size limit; ``size`` counts everything sent
    size: int


@dataclass
class _Submitted:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[_File] = field(default_factory=list)


class _Unreadable(Exception):
    """Not a form submission: wrong media type, broken multipart. ``submitted`` is what was read whole before the break."""

    def __init__(self, submitted: _Submitted | None = None) -> None:
        super().__init__()
        self.submitted = submitted or _Submitted()


def _text(value: str) -> str:
    """A header parameter as text: aiohttp keeps bytes that are not UTF-8 as lone surrogates, which cannot be encoded."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


async def _read_submission(request: web.Request, *, limit: int, max_file_bytes: int) -> _Submitted:
    """The posted fields and files, read as a stream so that nothing larger than ``limit`` is ever held.

    Raises BodyTooLarge past ``limit``, _Unreadable for anything that is not a readable form submission.
    """
    if declared_too_large(request, limit):
        raise BodyTooLarge(limit)
    submitted = _Submitted()
    if request.content_type == "application/x-www-form-urlencoded":
        try:
            body = await read_body(request, limit)
        except BodyUnreadable:
            raise _Unreadable from None
        for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
            submitted.fields.setdefault(name, value[: _MAX_FIELD_BYTES])
        return submitted
    if request.content_type != "multipart/form-data":
        raise _Unreadable
    total = 0
    # A photo from a phone may take minutes in all, so each pause is bounded, not the whole: an upload that stops (or a
    # client trickling a byte now and then to hold the connection) ends, and the form comes back with what was typed.
    pause = request.config_dict.get(BODY_TIMEOUT)
    try:
        reader = await request.multipart()
        for _ in range(_MAX_PARTS + 1):
            part = await asyncio.wait_for(reader.next(), pause)
            if part is None:
                return submitted
            if not isinstance(part, BodyPartReader):
                raise _Unreadable(submitted)
            # RFC 7578 4.2: every part is form-data with a name, and a browser names the file of a file input, if only "".
            # Anything else did not come from our form; a file taken for a text field would be lost without a word.
            disposition, params = parse_content_disposition(part.headers.get(hdrs.CONTENT_DISPOSITION))
            name = content_disposition_filename(params, "name")
            filename = content_disposition_filename(params, "filename")
            if disposition != "form-data" or name is None or (name == normalize.ATTACHMENTS and filename is None):
                raise _Unreadable(submitted)
            kept = bytearray()
            keep = max_file_bytes if filename is not None else _MAX_FIELD_BYTES
            size = 0
            while chunk := await asyncio.wait_for(part.read_chunk(_CHUNK), pause):
                size += len(chunk)
                total += len(chunk)
                if total > limit:
                    raise BodyTooLarge(limit)
                # Past the limit only the size is counted: the file will be refused, its first bytes name its type.
                if len(kept) < keep:
                    kept += chunk[: keep - len(kept)]
            if filename is None:
                submitted.fields.setdefault(_text(name), kept.decode("utf-8", "replace"))
            elif name == normalize.ATTACHMENTS and (size or filename):
                submitted.files.append(_File(filename=_text(filename), data=bytes(kept), size=size))
        raise _Unreadable(submitted)
    except (ValueError, TimeoutError, *STREAM_ERRORS):
        # ValueError: aiohttp's multipart parser on a broken boundary, a part cut short, a nested multipart's framing.
        # BadHttpMessage (in STREAM_ERRORS): a part's headers, with a NUL, no colon, a line over 8 KiB, too many of them.
        # What was read whole before the break is kept, for the form to come back with.
        raise _Unreadable(submitted) from None


# --- the channel ------------------------------------------------------------------


class WebFormChannel:
    """The complaint form: its pages, and the receiving side of the "web" channel."""

    def __init__(
        self,
        config: WebFormConfig,
        *,
        http: HttpConfig,
        acknowledgement: AcknowledgementConfig,
        reception: Reception,
        attachments: AttachmentStore,
        reply_senders: MutableMapping[str, ReplySender],
        email_domain: str = "localhost",
        csrf_key_path: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._reception = reception
        reception.replayable("web", self._replay)
        self._attachments = attachments
        # The gateway's own dict: channels wired after this one (email, SMS) register their senders in it later.
        self._reply_senders = reply_senders
        self._email_domain = email_domain
        self._clock = clock
        self._default_locale = negotiate(acknowledgement.default_locale)
        if config.csrf_secret is not None:
            secret = config.csrf_secret.get_secret_value().encode()
        elif csrf_key_path is not None:
            secret = kept_key(csrf_key_path)
        else:
            secret = secrets.token_bytes(32)
            log.info(
                "web form CSRF key generated for this process; set web_form.csrf_secret when running several replicas",
                extra={"event": "web_form_csrf_key_generated"},
            )
        self._tokens = CsrfTokens(secret, config.form_max_age_seconds, clock)
        self._rate = SlidingWindow(config.rate_limit, config.rate_window_seconds, config.rate_limit_clients)
        self._pages = Pages(acknowledgement.organisation, config.privacy_notice_url)
        public = urlsplit(http.public_base_url) if http.public_base_url else None
        self._public_origin = f"{public.scheme}://{public.netloc}".lower() if public else None
        self._secure = public is not None and public.scheme == "https"
        # The __Host- prefix makes browsers refuse the cookie unless it is Secure, host-only and for "/": a sibling
        # subdomain cannot overwrite it. Browsers only accept that over https.
        self._cookie = "__Host-intake-form" if self._secure else "intake-form"
        self.max_attachments = min(config.max_attachments, attachments.max_count)
        self.max_attachment_bytes = min(config.max_attachment_megabytes * 1024 * 1024, attachments.max_bytes)
        # Every file at its largest, plus room for the text fields and the multipart framing.
        self.max_request_bytes = self.max_attachments * self.max_attachment_bytes + 2 * 1024 * 1024

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get(PATH, self.show_form),
            web.post(PATH, self.receive),
            web.static("/static", STATIC),
        ]

    # --- GET ----------------------------------------------------------------------

    async def show_form(self, request: web.Request) -> web.Response:
        locale = self._locale(request)
        # Another open tab has the same cookie: keep its token while it is fresh, so both forms can be sent.
        token = request.cookies.get(self._cookie)
        age = self._tokens.age(token)
        if token is None or age is None or age > self._config.form_max_age_seconds / 2:
            token = self._tokens.issue()
        return self._form(locale, token=token, values={}, errors=[])

    # --- POST ---------------------------------------------------------------------

    async def _replay(self, raw: bytes, received_at: dt.datetime, context: dict[str, Any], submission_id: str) -> Outcome:
        """A dead letter taken in again; the page that answered the customer was shown long ago, so nobody is answered now."""
        return await self._reception.receive(
            channel="web",
            channel_message_id=submission_id,
            raw=raw,
            normalize=lambda: normalize.to_complaint(
                raw, submission_id=submission_id, received_at=received_at, default_region=self._config.default_phone_region
            ),
            received_at=received_at,
            ack="none",
            context=context,
        )

    async def receive(self, request: web.Request) -> web.Response:
        now = self._clock()
        locale = self._locale(request)
        wait = self._rate.hit(client_address(request, self._config.trusted_proxy_hops), now)
        if wait is not None:
            return self._refuse(
                locale, 429, "rate_limited", too_many=True, headers={"Retry-After": str(int(wait + 0.999))}
            )
        if self._cross_origin(request):
            return self._refuse(locale, 403, "cross_origin")
        try:
            submitted = await _read_submission(request, limit=self.max_request_bytes, max_file_bytes=self.max_attachment_bytes)
        except BodyTooLarge:
            return self._refuse(locale, 413, "too_large", too_large=True)
        except _Unreadable as error:
            return self._unreadable(locale, request, error.submitted)
        fields = submitted.fields
        if not self._tokens.matches(fields.get(CSRF_FIELD), request.cookies.get(self._cookie)):
            return self._refuse(locale, 403, "csrf")
        if fields.get(HONEYPOT):
            return self._refuse(locale, 400, "honeypot")
        submission_id = fields.get(SUBMISSION_FIELD, "")
        if not normalize.SUBMISSION_ID.match(submission_id):
            return self._refuse(locale, 400, "submission_id")
        token = fields[CSRF_FIELD]

        received_at = dt.datetime.fromtimestamp(now, dt.timezone.utc)
        errors: list[FieldError] = []
        form: normalize.ValidForm | None = None
        try:
            form = normalize.validate(fields, today=received_at.date(), default_region=self._config.default_phone_region)
        except InvalidMessage as error:
            errors.extend(error.errors)
        uploads = [normalize.Upload(f.filename, f.size, f.data[: normalize.SNIFF_BYTES]) for f in submitted.files]
        media_types: list[str] = []
        try:
            media_types = normalize.check_attachments(uploads, max_count=self.max_attachments, max_bytes=self.max_attachment_bytes)
        except InvalidMessage as error:
            errors.extend(error.errors)
        if errors or form is None:
            return self._form(locale, token=token, values=fields, errors=errors, files_dropped=bool(submitted.files), status=422)

        try:
            # Bytes first: a spooled record must never point at a file that is not there.
            stored: list[Attachment] = [
                await self._attachments.put(f.data, filename=f.filename, content_type=media_type)
                for f, media_type in zip(submitted.files, media_types, strict=True)
            ]
            raw = normalize.raw_submission(fields, locale=locale, attachments=stored)
            via, payload = self._reply_route(form)
            outcome = await self._reception.receive(
                channel="web",
                channel_message_id=submission_id,
                raw=raw,
                normalize=lambda: normalize.to_complaint(
                    raw, submission_id=submission_id, received_at=received_at, default_region=self._config.default_phone_region
                ),
                received_at=received_at,
                ack="inline",
                reply_via=via,
                reply_payload=payload,
                route={},  # a page cannot be written to: its complainant's contacts are used
            )
        except InvalidMessage as error:
            return self._form(locale, token=token, values=fields, errors=error.errors, files_dropped=bool(submitted.files), status=422)
        except TemporaryFailure as error:
            log.warning("web form complaint not stored; the customer is asked to send it again", extra={"event": "web_form_unavailable", "error": str(error)})
            return self._form(
                locale,
                token=token,
                values=fields,
                errors=[],
                files_dropped=bool(submitted.files),
                unavailable=True,
                status=503,
                headers={"Retry-After": str(int(error.retry_after))},
            )

        log.info(
            "web form complaint received",
            extra={"event": "web_form_received", "reference": outcome.reference, "duplicate": outcome.duplicate, "attachments": len(stored)},
        )
        acknowledgement = outcome.acknowledgement or {}
        return self._pages.render(
            "received.html",
            locale,
            reference=outcome.reference,
            paragraphs=[p for p in acknowledgement.get("text", "").split("\n\n") if p],
            copy_to=via if not outcome.duplicate else None,
            already_sent=outcome.duplicate and not outcome.same_content,
        )

    # --- parts ----------------------------------------------------------------------

    def _locale(self, request: web.Request) -> str:
        return page_locale(request, self._default_locale)

    def _cross_origin(self, request: web.Request) -> bool:
        return cross_origin(request, self._public_origin)

    def _reply_route(self, form: normalize.ValidForm) -> tuple[str | None, ReplyPayload | None]:
        """Where a copy of the acknowledgement also goes: the customer's preferred contact if we can send there."""
        routes: list[tuple[str, ReplyPayload]] = []
        if form.email and "email" in self._reply_senders:
            address, domain = form.email, self._email_domain
            # The email channel's own payload: its Message-ID carries the reference, so a reply finds the complaint.
            routes.append(
                ("email", lambda complaint, ack: acknowledgement_payload(complaint, ack, to=address, domain=domain))
            )
        if form.phone and "sms" in self._reply_senders:
            number = form.phone
            route: tuple[str, ReplyPayload] = (
                "sms",
                lambda complaint, ack: {"to": number, "text": ack.short, "locale": ack.locale, "direction": ack.direction},
            )
            routes.insert(0 if form.preferred_contact == "phone" else len(routes), route)
        if not routes:
            return None, None
        return routes[0]

    def _form(
        self,
        locale: str,
        *,
        token: str,
        values: Mapping[str, str],
        errors: list[FieldError],
        files_dropped: bool = False,
        unavailable: bool = False,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        catalog = translations(locale)
        messages: dict[str, list[str]] = {}
        summary: list[dict[str, str]] = []
        for error in errors:
            message = getattr(error, "message", "") or error.detail
            text = catalog.gettext(message)
            limit = getattr(error, "limit", None)
            if limit is not None:
                text = text.format(limit=localized_number(limit, locale))
            messages.setdefault(error.field, []).append(text)
            target = f"{error.field}-email" if error.field == normalize.PREFERRED_CONTACT else error.field
            summary.append({"target": target, "message": text})
        today = dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc).date()
        megabytes = max(1, self.max_attachment_bytes // (1024 * 1024))
        response = self._pages.render(
            "form.html",
            locale,
            status=status,
            headers=headers,
            values={name: values.get(name, "") for name in normalize.TEXT_FIELDS},
            errors={name: " ".join(texts) for name, texts in messages.items()},
            summary=summary,
            csrf_token=token,
            submission_id=values.get(SUBMISSION_FIELD) or secrets.token_urlsafe(16),
            files_dropped=files_dropped,
            unavailable=unavailable,
            latest_date=(today + dt.timedelta(days=1)).isoformat(),
            max_files=localized_number(self.max_attachments, locale),
            max_size=format_unit(localized_number(megabytes, locale), "digital-megabyte", length="short", locale=locale),
            accept=",".join(normalize.ATTACHMENT_TYPES) + ",.heic",
        )
        response.set_cookie(
            self._cookie,
            token,
            max_age=self._config.form_max_age_seconds,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self._secure,
        )
        return response

    def _unreadable(self, locale: str, request: web.Request, submitted: _Submitted) -> web.Response:
        """A submission that broke off: the form again with what was read of it, if its token shows it came from our form."""
        fields = submitted.fields
        token = fields.get(CSRF_FIELD)
        # Without a matching token the values could be anyone's, put in front of this visitor; and a filled honeypot is a robot.
        if not self._tokens.matches(token, request.cookies.get(self._cookie)) or fields.get(HONEYPOT):
            return self._refuse(locale, 400, "unreadable")
        assert token is not None  # matches() holds only for a token
        values = dict(fields)
        if not normalize.SUBMISSION_ID.match(values.get(SUBMISSION_FIELD, "")):
            values.pop(SUBMISSION_FIELD, None)  # a fresh one is made: the page must not carry what the id check would refuse
        log.info("web form submission unreadable; the form is sent back", extra={"event": "web_form_refused", "reason": "unreadable", "status": 400})
        # Files are never kept across a correction, and whatever broke most likely broke in one: say so.
        return self._form(locale, token=token, values=values, errors=[], files_dropped=True, status=400)

    def _refuse(
        self,
        locale: str,
        status: int,
        reason: str,
        *,
        too_many: bool = False,
        too_large: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        # The reason is logged, never the client's address or what it sent.
        log.info("web form submission refused", extra={"event": "web_form_refused", "reason": reason, "status": status})
        return self._pages.render(
            "refused.html", locale, status=status, headers=headers, too_many=too_many, too_large=too_large
        )
