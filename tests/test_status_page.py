"""The status page and the survey page over plain HTTP, as a browser without JavaScript uses them; signed survey links."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po

from intake.channels.status_page import StatusPage, StatusPageConfig
from intake import feedback as surveys
from intake.config import AcknowledgementConfig, HttpConfig
from intake.feedback import SurveyLinks
from intake.metrics import Metrics
from intake.twoway import Feedback, Route, StatusView, Survey
from tests.support.conversations import MemoryConversations
from tests.support.web_form import Page

REFERENCE = "C-2B4D-6F8H"  # not the example the pages show
OTHER = "C-8H6F-4D2B"
KEY = b"k" * 32
BASE = "https://complaints.example.com"
ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def store() -> MemoryConversations:
    route = Route(
        channel="email",
        address={"to": "ewa@example.com", "message_id": "<a@x>", "references": [], "subject": "s"},
        locale="pl",
        last_inbound_at=time.time(),
        contacts={"phone": "+48601234567"},
    )
    conversations = MemoryConversations(routes={REFERENCE: route})
    conversations.statuses[REFERENCE] = StatusView(REFERENCE, "in_progress", "We have asked the courier.", updated_at=1_764_670_000)
    conversations.surveys[REFERENCE] = Survey(survey_id="cmd-survey-1")
    return conversations


@pytest.fixture
def clock() -> Clock:
    return Clock()


# The test's own loop: the client's connections must not outlive the test that opened them.
@pytest_asyncio.fixture(loop_scope="function")
async def site(clock: Clock) -> AsyncIterator[tuple[TestClient, MemoryConversations, Metrics, SurveyLinks]]:
    conversations = store()
    metrics = Metrics()
    links = SurveyLinks(KEY, BASE, clock=clock)
    page = StatusPage(
        conversations, links=links, metrics=metrics, topic="complaints", source="urn:intake:test",
        http=HttpConfig(), acknowledgement=AcknowledgementConfig(), config=StatusPageConfig(default_phone_region="PL"), clock=clock,
    )  # fmt: skip
    app = web.Application()
    app.add_routes(page.routes())
    async with TestClient(TestServer(app)) as client:
        yield client, conversations, metrics, links


async def look_up(client: TestClient, reference: str, contact: str, **headers: str) -> tuple[int, Page, dict[str, str]]:
    async with client.post("/status", data={"reference": reference, "contact": contact}, headers=headers) as response:
        return response.status, Page(await response.text()), dict(response.headers)


# --- status -------------------------------------------------------------------------------------


async def test_the_form_is_localised_and_labelled(site):
    client, *_ = site
    async with client.get("/status", headers={"Accept-Language": "fa-IR,fa;q=0.9"}) as response:
        page = Page(await response.text())
    assert response.status == 200
    assert (page.root.attrs["lang"], page.root.attrs["dir"]) == ("fa", "rtl")
    assert {label.attrs["for"] for label in page.find_all("label")} >= {"reference", "contact"}
    assert page.find_all("legend") and page.find_all("form")[0].attrs["method"] == "post"
    assert "<script" not in page.html
    assert all(a.attrs["href"].startswith("/status?lang=") for a in page.find_all("a") if "hreflang" in a.attrs)


@pytest.mark.parametrize("contact", ["ewa@example.com", " EWA@Example.com ", "+48 601 234 567", "601234567"])
async def test_the_holder_sees_the_status(site, contact: str):
    client, conversations, *_ = site
    status, page, _ = await look_up(client, REFERENCE.lower(), contact, **{"Accept-Language": "en"})
    assert status == 200
    result = page.by_id("result").text
    assert f"Your complaint {REFERENCE} is being handled." in result
    assert "We have asked the courier." in result


async def test_a_stranger_and_an_unknown_reference_get_byte_identical_answers(site):
    client, conversations, *_ = site
    english = {"Accept-Language": "en"}
    _, _, _ = await look_up(client, REFERENCE, "ewa@example.com", **english)
    conversations.lookups.clear()
    stranger = await client.post("/status", data={"reference": REFERENCE, "contact": "eve@example.com"}, headers=english)
    stranger_body, stranger_lookups = await stranger.read(), list(conversations.lookups)
    conversations.lookups.clear()
    # The unknown reference is typed as the stranger typed theirs, so that only the reference differs in what is echoed.
    unknown = await client.post("/status", data={"reference": OTHER, "contact": "eve@example.com"}, headers=english)
    unknown_body = await unknown.read()
    assert stranger.status == unknown.status == 200
    assert stranger_body.replace(REFERENCE.encode(), b"REF") == unknown_body.replace(OTHER.encode(), b"REF")
    assert stranger_lookups == conversations.lookups == ["route", "status"]
    assert b"We could not find a complaint with that reference for you." in stranger_body
    assert b"being handled" not in stranger_body
    drop = {"Date"}
    assert {k: v for k, v in stranger.headers.items() if k not in drop} == {k: v for k, v in unknown.headers.items() if k not in drop}


async def test_a_malformed_reference_or_contact_is_a_clear_error(site):
    client, conversations, *_ = site
    status, page, _ = await look_up(client, "7K3M", "not a contact", **{"Accept-Language": "en"})
    assert status == 422
    assert page.by_id("reference").attrs.get("aria-invalid") == "true" and page.by_id("contact").attrs.get("aria-invalid") == "true"
    assert page.by_id("reference").attrs["value"] == "7K3M"  # kept, to be corrected
    assert conversations.lookups == []


async def test_lookups_are_limited_per_reference_and_per_client(site, clock: Clock):
    client, *_ = site
    for attempt in range(5):
        status, _, _ = await look_up(client, REFERENCE, f"guess{attempt}@example.com")
        assert status == 200
    status, page, headers = await look_up(client, REFERENCE, "ewa@example.com", **{"Accept-Language": "en"})
    assert status == 429 and int(headers["Retry-After"]) > 0
    assert "Too many attempts" in page.html and "being handled" not in page.html
    # Other references stay open to this client until its own limit (10 in 10 minutes).
    for attempt in range(4):
        status, _, _ = await look_up(client, OTHER, f"guess{attempt}@example.com")
        assert status == 200
    status, _, headers = await look_up(client, OTHER, "x@example.com")
    assert status == 429 and 0 < int(headers["Retry-After"]) <= 600
    clock.now += 3601
    status, _, _ = await look_up(client, REFERENCE, "ewa@example.com")
    assert status == 200


async def test_a_post_from_another_site_is_refused(site):
    client, conversations, *_ = site
    status, _, _ = await look_up(client, REFERENCE, "ewa@example.com", Origin="https://evil.example")
    assert status == 403 and conversations.lookups == []


# --- survey links -----------------------------------------------------------------------------


def test_links_are_signed_expire_and_carry_the_survey(clock: Clock):
    links = SurveyLinks(KEY, BASE + "/", clock=clock, max_age_seconds=3600)
    urls = links("cmd-survey-1", REFERENCE, "fa")
    assert sorted(urls) == [1, 2, 3, 4, 5]
    token = urls[4].removeprefix(f"{BASE}/survey/").removesuffix("?score=4")
    assert urls[4] == f"{BASE}/survey/{token}?score=4"
    assert links.verify(token) == ("cmd-survey-1", REFERENCE, "fa")
    assert SurveyLinks(b"o" * 32, BASE, clock=clock).verify(token) is None  # another key
    payload, _, mac = token.partition(".")
    assert links.verify(payload[:-2] + "AA." + mac) is None
    assert links.verify("") is None and links.verify("x" * 5000) is None and links.verify("no-dot") is None
    clock.now += 3601
    assert links.verify(token) is None
    assert SurveyLinks(KEY, None)("cmd-survey-1", REFERENCE, "en") == {}  # nowhere to link to: the mail asks for a reply


def test_the_key_is_kept_beside_the_spool(tmp_path: Path):
    spool = tmp_path / "spool.sqlite3"
    first = SurveyLinks.kept_beside(spool, BASE)
    token = first.token("cmd-survey-1", REFERENCE, "en")
    assert SurveyLinks.kept_beside(spool, BASE).verify(token) == ("cmd-survey-1", REFERENCE, "en")
    assert (tmp_path / "survey-links.key").stat().st_mode & 0o777 == 0o600


# --- the survey page ----------------------------------------------------------------------------


def _path(links: SurveyLinks, score: int = 4, reference: str = REFERENCE) -> str:
    return links("cmd-survey-1", reference, "de")[score].removeprefix(BASE)


async def test_opening_a_link_shows_the_score_chosen_and_records_nothing(site):
    client, conversations, metrics, links = site
    async with client.get(_path(links, 4)) as response:
        page = Page(await response.text())
    assert response.status == 200
    assert page.root.attrs["lang"] == "de"  # the complainant's language, from the link
    assert "checked" in page.by_id("score-4").attrs and "checked" not in page.by_id("score-3").attrs
    assert page.find_all("legend") and all(page.by_id(f"nps-{n}") for n in range(11)) and page.by_id("comment")
    assert "Sehr zufrieden" in page.html
    assert conversations.answers == {}
    assert metrics.registry.get_sample_value("intake_surveys_answered_total", {"channel": "email"}) is None


async def test_sending_the_page_records_the_answer_once(site):
    client, conversations, metrics, links = site
    path = _path(links, 4)
    answer = {"score": "5", "nps": "9", "comment": "Schnell und freundlich."}
    async with client.post(path, data=answer) as response:
        page = Page(await response.text())
    assert response.status == 200 and "Vielen Dank für Ihre Rückmeldung." in page.html
    async with client.post(path.replace("score=4", "score=1"), data={"score": "1"}) as again:
        assert again.status == 200 and "Vielen Dank" in await again.text()
    [(key, (feedback, event))] = conversations.answers.items()
    assert key == ("cmd-survey-1", "page")
    assert feedback == Feedback(REFERENCE, "cmd-survey-1", "email", score=5, nps=9, comment="Schnell und freundlich.", answer_id="page")
    assert event.key == REFERENCE.encode()
    assert metrics.registry.get_sample_value("intake_surveys_answered_total", {"channel": "email"}) == 1
    assert metrics.registry.get_sample_value("intake_csat_score_sum", {"channel": "email"}) == 5
    assert metrics.registry.get_sample_value("intake_nps_score_count", {"channel": "email"}) == 1


async def test_an_answer_without_a_score_is_asked_again_and_nothing_is_lost(site):
    client, conversations, _, links = site
    async with client.post(_path(links), data={"nps": "11", "comment": "Meh"}) as response:
        page = Page(await response.text())
    assert response.status == 422
    assert page.value("comment") == "Meh"
    assert "Wählen Sie, wie zufrieden Sie sind" in page.html
    assert conversations.answers == {}


@pytest.mark.parametrize("token", ["forged.token", "x" * 2000, "%00"])
async def test_a_bad_token_is_a_page_that_says_the_link_is_no_longer_valid(site, token: str):
    client, conversations, *_ = site
    for method in ("GET", "POST"):
        async with client.request(method, f"/survey/{token}?score=3", data={"score": "3"}, headers={"Accept-Language": "en"}) as response:
            assert response.status == 404
            assert "This link is no longer valid" in await response.text()
    assert conversations.answers == {}


async def test_an_expired_link_is_no_longer_valid(site, clock: Clock):
    client, _, _, links = site
    path = _path(links)
    clock.now += 31 * 24 * 3600
    async with client.get(path) as response:
        assert response.status == 404


async def test_record_refuses_an_answer_out_of_range():
    with pytest.raises(ValueError):
        await surveys.record(
            store(), Feedback(REFERENCE, "s", "telegram", score=6, answer_id="cb-1"), metrics=Metrics(), topic="t", source="s",
            received_at=dt.datetime.now(dt.timezone.utc),
        )  # fmt: skip


# --- the catalogs know the pages' words ---------------------------------------------------------------


def test_every_message_of_the_pages_is_in_the_template():
    with (ROOT / "intake" / "locale" / "intake.pot").open("rb") as fp:
        template = {message.id for message in read_po(fp) if message.id}
    found = set()
    for path in [ROOT / "intake" / "channels" / "status_page.py"]:
        found |= {message for _, message, _, _ in extract_from_file("python", path)}
    for name in ("status.html", "survey.html"):
        found |= {message for _, message, _, _ in extract_from_file("jinja2.ext:babel_extract", ROOT / "intake" / "templates" / name)}
    assert len(found) > 20 and found <= template


# --- in the gateway -------------------------------------------------------------------------------


async def test_the_gateway_serves_the_page_and_counts_its_refusals(tmp_path: Path, kafka, topic):
    import aiohttp

    from tests.support.gateway import running, settings

    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        async with http.get(f"{base}/status?lang=pl") as response:
            assert response.status == 200 and "Sprawdź status zgłoszenia" in await response.text()
        async with http.get(f"{base}/static/web_form.css") as response:
            assert response.status == 200  # served for these pages even with the web form off
        # Malformed lookups reach no conversation, and still count against the client's limit.
        for _ in range(10):
            async with http.post(f"{base}/status", data={"reference": "nope", "contact": "nope"}) as response:
                assert response.status == 422
        async with http.post(f"{base}/status", data={"reference": "nope", "contact": "nope"}) as response:
            assert response.status == 429 and "Retry-After" in response.headers
        refused = gateway.metrics.registry.get_sample_value("intake_refused_total", {"channel": "status_page", "status": "429"})
        assert refused == 1
    assert (tmp_path / "survey-links.key").stat().st_size == 32
