"""The form across a restart and its privacy notice: what a customer is typing is not thrown away."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.support.gateway import running
from tests.support.topic import of_type, read_topic
from tests.support.web_form import FormClient, valid_fields
from tests.test_web_form import form_settings


async def test_a_form_served_before_a_restart_is_taken_after_it(tmp_path: Path, kafka, topic):
    config = form_settings(tmp_path, kafka, topic)

    async with running(config) as (_, base), FormClient(base) as client:
        await client.open("?lang=en")
        cookies = list(client.session.cookie_jar)
        hidden = client.hidden()
    # The customer is still typing while the gateway restarts (a deploy); no csrf_secret is configured.
    async with running(config) as (_, base), FormClient(base) as client:
        for cookie in cookies:
            client.session.cookie_jar.update_cookies({cookie.key: cookie.value})
        response, page = await client.send(valid_fields(), hidden=hidden)
        records = await read_topic(kafka.bootstrap, topic, expect=2)
    assert response.status == 200, page.html
    assert [r.key for r in of_type(records, "received")] == [page.by_id("reference").text]
    key = tmp_path / "web-form-csrf.key"
    assert key.stat().st_size == 32 and stat.S_IMODE(key.stat().st_mode) == 0o600


async def test_the_privacy_notice_is_linked_next_to_the_consent_box(tmp_path: Path, kafka, topic):
    config = form_settings(tmp_path, kafka, topic, privacy_notice_url="https://example.org/privacy")
    async with running(config) as (_, base), FormClient(base) as client:
        _, english = await client.open("?lang=en")
        _, german = await client.open("?lang=de")
    [link] = [a for a in english.find_all("a") if a.attrs.get("href") == "https://example.org/privacy"]
    assert link.text == "How we handle your personal data"
    # Beside the consent box: after it, before the button that sends the form.
    html = english.html
    assert html.index('id="consent"') < html.index("https://example.org/privacy") < html.index('type="submit"')
    assert any(a.text == "Wie wir Ihre personenbezogenen Daten verarbeiten" for a in german.find_all("a"))
