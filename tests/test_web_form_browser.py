"""The complaint form in a real headless Chromium (Playwright), against a running gateway and the real Kafka broker.

Needs the Debian package ``chromium`` and axe-core from npm (``npm ci --prefix tests/browser``).
Screenshots of every page land in test-artifacts/.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, Response, async_playwright

from intake.normalizer.record import json_schema
from tests.support.gateway import running, settings
from tests.support.topic import Record, of_type, read_topic
from tests.support.web_form import png

CHROMIUM = Path("/usr/bin/chromium")
AXE = Path(__file__).resolve().parent / "browser" / "node_modules" / "axe-core" / "axe.min.js"
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCHEMA = json_schema()
SUBMIT = "button[type=submit]"

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs the Debian package chromium"),
]

ENGLISH = {
    "name": "Jane Doe",
    "email": "jane@example.com",
    "phone": "+44 20 7946 0958",
    "product": "Broadband, account 778",
    "description": "The line has been down for a week.",
    "desired_outcome": "A refund for the week",
}
PERSIAN = {
    "name": "سارا محمدی",
    "email": "sara@example.com",
    "phone": "+98 912 345 6789",
    "product": "ارسال پستی، سفارش ۱۲۳",
    "description": "بستهٔ من شکسته به دستم رسید.",
    "desired_outcome": "تعویض کالا",
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest_asyncio.fixture(loop_scope="module")
async def gateway(tmp_path: Path, kafka: Any, topic: str) -> AsyncIterator[str]:
    config = settings(
        tmp_path, kafka.bootstrap, topic, attachments={"directory": str(tmp_path / "attachments")}, web_form={"enabled": True}
    )
    async with running(config) as (_, base):
        yield base


async def new_page(chromium: Browser, locale: str, *, audit: bool = False) -> tuple[BrowserContext, Page, list[str]]:
    """A fresh visitor; ``audit`` lets axe-core be injected past the page's no-scripts policy."""
    context = await chromium.new_context(locale=locale, bypass_csp=audit, viewport={"width": 1024, "height": 900})
    page = await context.new_page()
    policy_violations: list[str] = []
    page.on("console", lambda message: policy_violations.append(message.text) if "Content Security Policy" in message.text else None)
    return context, page, policy_violations


async def fill(page: Page, fields: dict[str, str], *, consent: bool = True, files: list[dict[str, Any]] | None = None) -> None:
    for name, value in fields.items():
        await page.fill(f"#{name}", value)
    await page.check("#preferred_contact-email")
    await page.fill("#occurred_on", "2024-03-17")
    if files:
        await page.set_input_files("#attachments", files=files)
    if consent:
        await page.check("#consent")


async def submit(page: Page, action: Any = None) -> Response:
    async with page.expect_navigation() as navigation:
        if action is None:
            await page.click(SUBMIT)
        else:
            await action()
    response = await navigation.value
    assert response is not None
    return response


async def audit(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now."""
    if not await page.evaluate("typeof axe !== 'undefined'"):
        await page.add_script_tag(path=str(AXE))
    result = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


async def received(kafka: Any, topic: str, complaints: int) -> list[Record]:
    records = await read_topic(kafka.bootstrap, topic, expect=2 * complaints)
    return of_type(records, "received")


# --- submitting -------------------------------------------------------------------


@pytest.mark.parametrize(("locale", "fields", "direction"), [("en", ENGLISH, "ltr"), ("fa", PERSIAN, "rtl")])
async def test_a_customer_submits_the_form_and_the_record_carries_it(
    chromium: Browser, gateway: str, kafka: Any, topic: str, artifacts: Path, locale: str, fields: dict[str, str], direction: str
):
    context, page, violations = await new_page(chromium, locale)
    try:
        await page.goto(f"{gateway}/complaint")  # the language comes from the browser's Accept-Language
        assert await page.get_attribute("html", "lang") == locale
        assert await page.get_attribute("html", "dir") == direction
        # The stylesheet is allowed by the page's policy and applies: the button is styled.
        assert await page.eval_on_selector(SUBMIT, "e => getComputedStyle(e).backgroundColor") == "rgb(29, 78, 216)"
        # The layout mirrors: a label's words start where its field starts, on the right for Persian.
        label = await page.evaluate(
            "(() => { const r = document.createRange(); r.selectNodeContents(document.querySelector('label[for=name]'));"
            " const b = r.getBoundingClientRect(); return {left: b.left, right: b.right}; })()"
        )
        field = await page.locator("#name").bounding_box()
        assert field
        if direction == "rtl":
            assert abs(label["right"] - (field["x"] + field["width"])) < 2 and label["left"] > field["x"] + field["width"] / 2
        else:
            assert abs(label["left"] - field["x"]) < 2 and label["right"] < field["x"] + field["width"] / 2
        await fill(page, fields, files=[{"name": "photo.png", "mimeType": "image/png", "buffer": png(4, 3)}])
        await page.screenshot(path=str(artifacts / f"web-form-{locale}-filled.png"), full_page=True)

        response = await submit(page)
        assert response.status == 200
        reference = (await page.text_content("#reference") or "").strip()
        assert re.fullmatch(r"C-[0-9A-Z]{4}-[0-9A-Z]{4}", reference)
        assert reference in (await page.text_content(".acknowledgement") or "")
        assert await page.get_attribute("html", "dir") == direction
        await page.screenshot(path=str(artifacts / f"web-form-{locale}-confirmation.png"), full_page=True)
        assert violations == []
    finally:
        await context.close()

    [record] = await received(kafka, topic, 1)
    data = record.data
    jsonschema.validate(data, SCHEMA)
    assert record.key == data["reference"] == reference
    assert data["channel"] == "web" and data["language"] == locale and data["complainant"]["locale"] == locale
    assert data["complainant"]["name"] == fields["name"] and data["complainant"]["email"] == fields["email"]
    assert data["complainant"]["preferred_contact"] == "email"
    assert (data["text"], data["product"], data["desired_outcome"]) == (fields["description"], fields["product"], fields["desired_outcome"])
    assert data["occurred_at"] == "2024-03-17" and data["consent_to_processing"] is True
    assert [(a["filename"], a["content_type"]) for a in data["attachments"]] == [("photo.png", "image/png")]


async def test_a_validation_error_shows_next_to_its_field_with_the_values_kept(chromium: Browser, gateway: str, artifacts: Path):
    context, page, _ = await new_page(chromium, "en")
    try:
        await page.goto(f"{gateway}/complaint")
        await fill(page, {**ENGLISH, "email": "jane(at)example"}, consent=False,
                   files=[{"name": "photo.png", "mimeType": "image/png", "buffer": png()}])
        response = await submit(page)
        assert response.status == 422
        # The summary takes the focus, so a screen reader starts with what went wrong.
        assert await page.evaluate("document.activeElement.classList.contains('error-summary')")
        assert await page.title() == "Error: Make a complaint"
        error = page.locator("#email-error")
        assert await error.is_visible()
        assert "Enter an email address like name@example.com." in (await error.text_content() or "")
        assert await page.get_attribute("#email", "aria-invalid") == "true"
        assert "email-error" in (await page.get_attribute("#email", "aria-describedby") or "").split()
        # Next to its field: between the field's label and the field itself.
        label, message, field = [await page.locator(s).bounding_box() for s in ("label[for=email]", "#email-error", "#email")]
        assert label and message and field and label["y"] < message["y"] < field["y"] < message["y"] + 80
        # What was typed is still there; files have to be chosen again, and the page says so.
        for name, value in {**ENGLISH, "email": "jane(at)example"}.items():
            assert await page.input_value(f"#{name}") == value, name
        assert await page.is_checked("#preferred_contact-email") and not await page.is_checked("#consent")
        assert await page.input_value("#occurred_on") == "2024-03-17"
        assert await page.eval_on_selector("#attachments", "e => e.files.length") == 0
        assert await page.locator("#attachments-hint strong").is_visible()
        await page.screenshot(path=str(artifacts / "web-form-en-error.png"), full_page=True)

        # Following the summary's link brings the field into view; correcting it sends the complaint.
        await page.click(".error-summary a[href='#email']")
        assert await page.evaluate("location.hash") == "#email"
        await page.fill("#email", "jane@example.com")
        await page.check("#consent")
        response = await submit(page)
        assert response.status == 200 and await page.locator("#reference").is_visible()
    finally:
        await context.close()


async def test_the_form_can_be_filled_and_sent_with_the_keyboard_alone(chromium: Browser, gateway: str, artifacts: Path):
    context, page, _ = await new_page(chromium, "en")
    typed = {"name": "Kim Keyboard", "email": "kim@example.com", "description": "Typed without a mouse."}
    visited: list[str] = []
    try:
        await page.goto(f"{gateway}/complaint")
        for _ in range(60):
            await page.keyboard.press("Tab")
            focused = await page.evaluate(
                "(() => { const e = document.activeElement; return e.id || (e.tagName === 'BUTTON' ? 'submit' : e.className || e.tagName); })()"
            )
            if not visited or visited[-1] != focused:  # a date field takes several Tabs (day, month, year)
                visited.append(focused)
            if focused == "name":
                # Focus is visible: a thick outline drawn around the focused field.
                style = await page.evaluate("(() => { const s = getComputedStyle(document.activeElement); return [s.outlineStyle, s.outlineWidth]; })()")
                assert style == ["solid", "3px"]
                await page.screenshot(path=str(artifacts / "web-form-en-keyboard-focus.png"))
            if focused in typed:
                await page.keyboard.type(typed[focused])
            if focused == "consent":
                await page.keyboard.press("Space")
            if focused == "submit":
                response = await submit(page, lambda: page.keyboard.press("Enter"))
                break
        else:
            pytest.fail(f"the submit button was never reached: {visited}")
        assert response.status == 200
        assert await page.locator("#reference").is_visible()
    finally:
        await context.close()

    assert "homepage" not in visited  # the honeypot is never in a person's way
    controls = [name for name in visited if name not in ("skip-link", "A")]
    assert controls == [
        "name", "email", "phone", "preferred_contact-email", "product", "occurred_on",
        "description", "desired_outcome", "attachments", "consent", "submit",
    ]
    assert visited[0] == "skip-link"  # the first stop skips the language links for whoever does not need them


@pytest.mark.parametrize("locale", ["en", "fa"])
async def test_no_serious_accessibility_violation_on_any_page(chromium: Browser, gateway: str, artifacts: Path, locale: str):
    assert AXE.exists(), "run: npm ci --prefix tests/browser"
    context, page, _ = await new_page(chromium, locale, audit=True)
    try:
        await page.goto(f"{gateway}/complaint")
        assert await audit(page) == [], "the form"
        await page.screenshot(path=str(artifacts / f"web-form-{locale}-form.png"), full_page=True)

        response = await submit(page)  # everything left empty
        assert response.status == 422
        assert await audit(page) == [], "the form with errors"
        await page.screenshot(path=str(artifacts / f"web-form-{locale}-errors.png"), full_page=True)

        await fill(page, ENGLISH if locale == "en" else PERSIAN)
        response = await submit(page)
        assert response.status == 200
        assert await audit(page) == [], "the confirmation"
    finally:
        await context.close()


async def test_a_form_without_its_token_or_with_the_honeypot_filled_publishes_nothing(
    chromium: Browser, gateway: str, kafka: Any, topic: str, artifacts: Path
):
    context, page, _ = await new_page(chromium, "en")
    try:
        await page.goto(f"{gateway}/complaint")
        await fill(page, {**ENGLISH, "description": "Sent without the token."})
        await page.evaluate("document.querySelector('[name=csrf_token]').remove()")
        response = await submit(page)
        assert response.status == 403
        assert "Open the form again" in (await page.text_content("main") or "")
        await page.screenshot(path=str(artifacts / "web-form-en-refused.png"), full_page=True)

        await page.goto(f"{gateway}/complaint")
        await fill(page, {**ENGLISH, "description": "Sent by a robot."})
        await page.evaluate("document.getElementById('homepage').value = 'http://spam.example'")
        response = await submit(page)
        assert response.status == 400

        await page.goto(f"{gateway}/complaint")
        await fill(page, {**ENGLISH, "description": "Sent by a person."})
        response = await submit(page)
        assert response.status == 200
        reference = (await page.text_content("#reference") or "").strip()
    finally:
        await context.close()

    records = await received(kafka, topic, 1)
    assert [(r.data["reference"], r.data["text"]) for r in records] == [(reference, "Sent by a person.")]
