"""The status page and the survey page: a complaint's status for whoever holds it, and the answer to an emailed survey.

``GET /status`` shows a form: the reference and the email address or phone
number the complainant gave. ``POST /status`` answers with the status when
that contact is the complaint's (its route's address, or a contact given with
it), and otherwise with the words a reference that does not exist gets: same
status code, same body, same lookups either way, so the page cannot be used to
learn whether a reference exists. Attempts are limited per client address and
per reference.

``GET /survey/<token>?score=N`` shows the survey with N chosen; it records
nothing, because mail scanners open every link in a message. ``POST`` records
the answer once (``intake.feedback.record``) and thanks the customer, however
often it is sent. A token that is forged or expired gets a 404 page that says
the link is no longer valid.

Both pages are the web form's: its templates, languages, headers and abuse
guards. No JavaScript, labelled controls, ``lang`` and ``dir`` on every page.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlsplit

from aiohttp import web
from babel.dates import format_datetime
from pydantic import BaseModel, ConfigDict, Field

from intake.channels.web_form import STATIC, Pages, SlidingWindow, client_address, cross_origin, page_locale
from intake import feedback as surveys
from intake import texts
from intake.acknowledgement import _number as localized_number
from intake.errors import TemporaryFailure
from intake.http import BodyTooLarge, BodyUnreadable, read_body
from intake.i18n import negotiate
from intake.requests import MAX_COMMENT_CHARS, holds
from intake.twoway import Feedback
from intake.normalizer.contact import NotAPhoneNumber, e164
from intake.normalizer.reference import parse_reference

if TYPE_CHECKING:
    from intake.config import AcknowledgementConfig, HttpConfig
    from intake.feedback import SurveyLinks
    from intake.metrics import Metrics
    from intake.twoway import Conversations

__all__ = ["STATUS_PATH", "SURVEY_PATH", "StatusPage", "StatusPageConfig"]

log = logging.getLogger("intake.channels.status_page")

STATUS_PATH = "/status"
SURVEY_PATH = "/survey"
# Two short fields, or three and a comment: anything bigger is not from our forms.
_MAX_BODY_BYTES = 16 * 1024
_MAX_FIELD_CHARS = 320


_PAGE_DEFAULTS: dict[str, Any] = {
    "action": STATUS_PATH,
    "errors": {},
    "found": None,
    "invalid": False,
    "max_comment": MAX_COMMENT_CHARS,
    "max_comment_shown": str(MAX_COMMENT_CHARS),
    "not_found": None,
    "nps_numbers": [],
    "problem": None,
    "reference": "",
    "scores": [],
    "thanks": False,
    "unavailable": False,
    "updated": None,
    "values": {"score": None, "nps": None, "comment": ""},
}


class StatusPageConfig(BaseModel):
    """The ``[status_page]`` section: the status and survey pages' limits."""

    model_config = ConfigDict(extra="forbid")

    client_limit: int = Field(10, ge=1, description="Status lookups one client address may make within client_window_seconds; more get 429.")
    client_window_seconds: float = Field(600, gt=0, description="The sliding window of client_limit.")
    reference_limit: int = Field(
        5, ge=1, description="Status lookups of one reference, from anywhere, within reference_window_seconds: guessing a contact stays slow."
    )
    reference_window_seconds: float = Field(3600, gt=0, description="The sliding window of reference_limit.")
    survey_limit: int = Field(20, ge=1, description="Survey answers one client address may send within client_window_seconds.")
    remembered: int = Field(100_000, ge=100, description="Client addresses and references remembered for rate limiting; the oldest are forgotten.")
    trusted_proxy_hops: int = Field(0, ge=0, le=10, description="As web_form.trusted_proxy_hops: proxies that append X-Forwarded-For.")
    default_phone_region: str | None = Field(
        None, pattern=r"^[A-Za-z]{2}$", description="Country of phone numbers typed without a country code, e.g. PL; unset, the code is required."
    )


class StatusPage:
    """The ``/status`` and ``/survey/<token>`` pages over the spool's conversations."""

    def __init__(
        self,
        conversations: Conversations,
        *,
        links: SurveyLinks,
        metrics: Metrics,
        topic: str,
        source: str,
        http: HttpConfig,
        acknowledgement: AcknowledgementConfig,
        config: StatusPageConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._conversations = conversations
        self._links = links
        self._metrics = metrics
        self._topic = topic
        self._source = source
        self._config = config or StatusPageConfig()
        self._clock = clock
        self._default_locale = negotiate(acknowledgement.default_locale)
        self._pages = Pages(acknowledgement.organisation)
        public = urlsplit(http.public_base_url) if http.public_base_url else None
        self._public_origin = f"{public.scheme}://{public.netloc}".lower() if public else None
        c = self._config
        self._per_client = SlidingWindow(c.client_limit, c.client_window_seconds, c.remembered)
        self._per_reference = SlidingWindow(c.reference_limit, c.reference_window_seconds, c.remembered)
        self._survey_clients = SlidingWindow(c.survey_limit, c.client_window_seconds, c.remembered)

    def routes(self, *, static: bool = True) -> list[web.RouteDef]:
        """The pages' routes; ``static=False`` when the web form already serves ``/static``."""
        routes: list[Any] = [
            web.get(STATUS_PATH, self.show_status_form),
            web.post(STATUS_PATH, self.look_up),
            web.get(SURVEY_PATH + "/{token}", self.show_survey),
            web.post(SURVEY_PATH + "/{token}", self.answer_survey),
        ]
        if static:
            routes.append(web.static("/static", STATIC))
        return routes

    # --- status -------------------------------------------------------------------------

    async def show_status_form(self, request: web.Request) -> web.Response:
        return self._status_page(page_locale(request, self._default_locale))

    async def look_up(self, request: web.Request) -> web.Response:
        now = self._clock()
        locale = page_locale(request, self._default_locale)
        wait = self._per_client.hit(client_address(request, self._config.trusted_proxy_hops), now)
        if wait is not None:
            return self._too_many("status.html", locale, wait, "client")
        if cross_origin(request, self._public_origin):
            return self._refused("status.html", locale, 403, "cross_origin")
        fields = await self._fields(request)
        if fields is None:
            return self._refused("status.html", locale, 400, "unreadable")
        typed_reference = fields.get("reference", "").strip()[:_MAX_FIELD_CHARS]
        typed_contact = fields.get("contact", "").strip()[:_MAX_FIELD_CHARS]
        reference = parse_reference(typed_reference)
        errors: dict[str, str] = {}
        if reference is None:
            errors["reference"] = "reference"
        contact = self._contact(typed_contact)
        if contact is None:
            errors["contact"] = "contact"
        if errors or reference is None or contact is None:
            return self._status_page(locale, reference=typed_reference, errors=errors, status=422)
        wait = self._per_reference.hit(reference, now)
        if wait is not None:
            return self._too_many("status.html", locale, wait, "reference")
        # Both lookups, and every comparison, whatever the first lookup found.
        route = await self._conversations.route(reference)
        view = await self._conversations.status(reference)
        if not holds([contact], route) or route is None:
            log.info("status page lookup unanswered", extra={"event": "status_page_lookup", "known": False})
            return self._status_page(locale, reference=reference, not_found=texts.compose_status_unknown(locale).text)
        answer = texts.compose_status_answer(reference, view, locale)
        updated = None
        if view is not None:
            moment = dt.datetime.fromtimestamp(view.updated_at, dt.timezone.utc)
            updated = format_datetime(moment, format="long", tzinfo=dt.timezone.utc, locale=locale)
        log.info("status page lookup answered", extra={"event": "status_page_lookup", "known": True, "reference": reference})
        return self._status_page(
            locale,
            reference=reference,
            found=[paragraph for paragraph in answer.text.split("\n\n") if paragraph],
            updated=updated,
        )

    def _contact(self, typed: str) -> tuple[str, str] | None:
        """What the visitor typed as (kind, value) in the form route identities take; None if neither an address nor a number."""
        if "@" in typed:
            local, _, domain = typed.rpartition("@")
            return ("email", typed.casefold()) if local and "." in domain else None
        try:
            return ("phone", e164(typed, self._config.default_phone_region))
        except NotAPhoneNumber:
            return None

    def _status_page(
        self,
        locale: str,
        *,
        reference: str = "",
        errors: Mapping[str, str] | None = None,
        found: list[str] | None = None,
        updated: str | None = None,
        not_found: str | None = None,
        status: int = 200,
    ) -> web.Response:
        return self._render(
            "status.html",
            locale,
            status=status,
            path=STATUS_PATH,
            action=f"{STATUS_PATH}?lang={locale}",
            reference=reference,
            errors=dict(errors or {}),
            found=found,
            updated=updated,
            not_found=not_found,
        )

    # --- survey -------------------------------------------------------------------------

    async def show_survey(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        verified = self._links.verify(token)
        if verified is None:
            return self._link_invalid(page_locale(request, self._default_locale))
        _survey_id, reference, locale = verified
        locale = page_locale(request, self._default_locale, preferred=locale)
        score = _int(request.query.get("score"), 1, 5)
        return self._survey_page(locale, token, reference, values={"score": score, "nps": None, "comment": ""})

    async def answer_survey(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        verified = self._links.verify(token)
        if verified is None:
            return self._link_invalid(page_locale(request, self._default_locale))
        survey_id, reference, token_locale = verified
        locale = page_locale(request, self._default_locale, preferred=token_locale)
        wait = self._survey_clients.hit(client_address(request, self._config.trusted_proxy_hops), self._clock())
        if wait is not None:
            return self._too_many("survey.html", locale, wait, "survey", token=token)
        if cross_origin(request, self._public_origin):
            return self._refused("survey.html", locale, 403, "cross_origin", token=token)
        fields = await self._fields(request)
        if fields is None:
            return self._refused("survey.html", locale, 400, "unreadable", token=token)
        score = _int(fields.get("score"), 1, 5)
        nps = _int(fields.get("nps"), 0, 10)
        comment = fields.get("comment", "").strip()
        errors: dict[str, str] = {}
        if score is None:
            errors["score"] = "score"
        if fields.get("nps", "").strip() and nps is None:
            errors["nps"] = "nps"
        if len(comment) > MAX_COMMENT_CHARS:
            errors["comment"] = "comment"
        if errors:
            values = {"score": score, "nps": nps, "comment": comment}
            return self._survey_page(locale, token, reference, values=values, errors=errors, status=422)
        answer = Feedback(
            reference=reference,
            survey_id=survey_id,
            channel="email",  # the links are only ever sent by email
            score=score,
            nps=nps,
            comment=comment or None,
            # One answer per survey from the page: a second post (a reload, another link of the same mail) is the same answer.
            answer_id="page",
        )
        try:
            recorded = await surveys.record(
                self._conversations,
                answer,
                metrics=self._metrics,
                topic=self._topic,
                source=self._source,
                received_at=dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc),
            )
        except TemporaryFailure as error:
            log.warning("survey answer not stored; the customer is asked to send it again", extra={"event": "survey_page_unavailable"})
            values = {"score": score, "nps": nps, "comment": comment}
            return self._survey_page(
                locale, token, reference, values=values, unavailable=True, status=503,
                headers={"Retry-After": str(int(error.retry_after))},
            )  # fmt: skip
        log.info("survey answered on the page", extra={"event": "survey_page_answer", "reference": reference, "recorded": recorded})
        return self._render("survey.html", locale, path=self._survey_path(token), thanks=True, reference=reference)

    def _survey_path(self, token: str) -> str:
        return f"{SURVEY_PATH}/{quote(token, safe='')}"

    def _survey_page(
        self,
        locale: str,
        token: str,
        reference: str,
        *,
        values: Mapping[str, Any],
        errors: Mapping[str, str] | None = None,
        unavailable: bool = False,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        path = self._survey_path(token)
        return self._render(
            "survey.html",
            locale,
            status=status,
            headers=headers,
            path=path,
            action=f"{path}?lang={locale}",
            thanks=False,
            reference=reference,
            values=dict(values),
            errors=dict(errors or {}),
            unavailable=unavailable,
            scores=[(score, localized_number(score, locale), texts.score_label(score, locale)) for score in range(1, 6)],
            nps_numbers=[(number, localized_number(number, locale)) for number in range(11)],
            max_comment=MAX_COMMENT_CHARS,
            max_comment_shown=localized_number(MAX_COMMENT_CHARS, locale),
        )

    def _link_invalid(self, locale: str) -> web.Response:
        return self._render("survey.html", locale, status=404, path=STATUS_PATH, invalid=True)

    # --- parts ----------------------------------------------------------------------------

    def _render(self, template: str, locale: str, **context: Any) -> web.Response:
        # Every name either template reads, so that StrictUndefined finds each one whatever the answer.
        return self._pages.render(template, locale, **{**_PAGE_DEFAULTS, **context})

    async def _fields(self, request: web.Request) -> dict[str, str] | None:
        if request.content_type != "application/x-www-form-urlencoded":
            return None
        try:
            body = await read_body(request, _MAX_BODY_BYTES)
        except (BodyTooLarge, BodyUnreadable):
            return None
        return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))

    def _too_many(self, template: str, locale: str, wait: float, limit: str, *, token: str | None = None) -> web.Response:
        return self._refused(template, locale, 429, f"rate_limited_{limit}", token=token, headers={"Retry-After": str(int(wait + 0.999))})

    def _refused(
        self, template: str, locale: str, status: int, reason: str, *, token: str | None = None, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        # The reason is logged, never the client's address or what it typed.
        log.info("status or survey page refused", extra={"event": "status_page_refused", "reason": reason, "status": status})
        problem = "too_many" if status == 429 else "refused"
        path = self._survey_path(token) if token else STATUS_PATH
        return self._render(
template, locale, status=status, headers=headers, path=path, problem=problem)


def _int(value: str | None, low: int, high: int) -> int | None:
    """A number typed or chosen in a form, within bounds; None for anything else."""
    if value is None:
        return None
    value = value.strip()
    if not value.isdecimal() or len(value) > 2:
        return None
    number = int(value)  # int() reads every script's digits, as customers may type them
    return number if low <= number <= high else None

