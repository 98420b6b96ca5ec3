"""Mailboxes and the relay signing in with OAuth 2.0 (XOAUTH2, OAUTHBEARER), as Microsoft 365 and Gmail require.

A real Dovecot with an oauth2 passdb checks every token at a local
authorization server (token endpoint and introspection) started for these
tests; mail is read back from the real Kafka broker; acknowledgements go
through a capturing relay that accepts AUTH only with a token the same server
vouches for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from intake.channels.email import EmailLimitsConfig, ImapMailboxConfig, OAuthConfig, RelayConfig
from intake.channels.email.oauth import AccessTokens, TokenRefused, TokenUnavailable
from intake.channels.email.reply import AcknowledgementSender
from intake.errors import TemporaryFailure
from intake.metrics import Metrics
from tests.support.dovecot import Dovecot
from tests.support.gateway import running
from tests.support.mail import CUSTOMER, OUR_ADDRESS, complaint_mail, email_settings, smtp_send
from tests.support.oauth_server import AuthorizationServer, Client
from tests.support.smtp_relay import CapturingRelay, SignIn
from tests.support.topic import of_type, read_topic, wait_for
from tests.test_email_imap import append, idling, mailbox_settings, raw, taken_in, watcher

# What Microsoft 365 wants for IMAP with client credentials; the local server only checks that one is asked for.
SCOPE = "https://outlook.office365.com/.default"

# The test relay takes tokens in clear on the loopback interface, which aiosmtpd warns about on every connection.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


@pytest.fixture(scope="module")
def authorization() -> Iterator[AuthorizationServer]:
    server = AuthorizationServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def dovecot(authorization: AuthorizationServer) -> Iterator[Dovecot]:
    with Dovecot(oauth=authorization) as server:
        yield server


@pytest.fixture
def folder(dovecot: Dovecot) -> str:
    return dovecot.new_folder()


def oauth_section(authorization: AuthorizationServer, client: Client, *, refresh_token: str | None = None, **options: Any):
    """``oauth`` as an operator writes it: Microsoft 365's client credentials, or Gmail's refresh token when one is given."""
    section: dict[str, Any] = {"token_url": authorization.token_url, "client_id": client.client_id, "client_secret": client.client_secret}
    if refresh_token is None:
        section.update(grant="client_credentials", scope=SCOPE)
    else:
        section.update(grant="refresh_token", refresh_token=refresh_token, scope="https://mail.google.com/")
    return {**section, **options}


def signed_in_with(mechanism: str, oauth: dict[str, Any]) -> dict[str, Any]:
    """The mailbox options that replace the password (there is none) with a token."""
    return {"auth": mechanism, "password": None, "oauth": oauth}


async def grants(authorization: AuthorizationServer, client: Client, count: int, timeout: float = 20) -> None:
    async def enough() -> bool:
        return len(authorization.grants_of(client)) >= count

    await wait_for(enough, timeout=timeout)


# --- IMAP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mechanism", "grant"),
    [("xoauth2", "client_credentials"), ("oauthbearer", "refresh_token")],
    ids=["microsoft365-xoauth2-client-credentials", "gmail-oauthbearer-refresh-token"],
)
async def test_a_mail_appended_is_taken_in_by_a_watcher_that_signs_in_with_a_token(
    tmp_path: Path, kafka, topic, relay, dovecot, folder, authorization, mechanism, grant
):
    client = authorization.register(dovecot.user)
    refresh_token = authorization.consent(client) if grant == "refresh_token" else None
    oauth = oauth_section(authorization, client, refresh_token=refresh_token)
    config = mailbox_settings(tmp_path, kafka, topic, relay, dovecot, folder, **signed_in_with(mechanism, oauth))
    mail = complaint_mail("Read by a watcher without a password.")
    log_before = len(dovecot.log)
    async with running(config) as (gateway, _):
        await idling(gateway)
        await append(dovecot, folder, raw(mail))
        await taken_in(gateway, 1)
        records = await read_topic(kafka.bootstrap, topic, expect=2)
    [received] = of_type(records, "received")
    assert received.data["channel_message_id"].startswith(mail["Message-ID"] + " sha256:")
    [granted] = authorization.grants_of(client)
    assert (granted.grant_type, granted.error) == (grant, "")
    assert granted.refresh_token == (refresh_token or "")
    # Dovecot asked the authorization server about that very token, and signed the watcher in with the mechanism asked for.
    checks = authorization.checks_of(client)
    assert checks and all(check.active and check.token == granted.access_token for check in checks)
    assert f"Login: user=<{dovecot.user}>, method={mechanism.upper()}" in dovecot.log[log_before:]


async def test_a_token_is_replaced_before_it_expires(tmp_path: Path, kafka, topic, relay, dovecot, folder, authorization):
    client = authorization.register(dovecot.user, expires_in=16)
    # Replaced 8 s before it expires: from 8 s after it was granted.
    oauth = oauth_section(authorization, client, refresh_before_seconds=8)
    config = mailbox_settings(
        tmp_path, kafka, topic, relay, dovecot, folder, reconnect_max_seconds=2, **signed_in_with("xoauth2", oauth)
    )
    async with running(config) as (gateway, _):
        await idling(gateway)
        [first] = authorization.grants_of(client)
        # Past the point of replacement, well before expiry, the server ends the session (Exchange Online does so
        # when a session's token expires): the watcher signs in again, with a new token rather than the old one.
        await asyncio.sleep(max(0.0, first.at + 9 - time.time()))
        await asyncio.to_thread(dovecot.kick)
        await grants(authorization, client, 2)
        await idling(gateway)
        await append(dovecot, folder, raw(complaint_mail("Taken in with the second token.")))
        await taken_in(gateway, 1)
    first, second = authorization.grants_of(client)
    assert second.access_token and second.access_token != first.access_token
    assert second.at < first.expires_at, "the token should have been replaced before it expired"
    checks = authorization.checks_of(client)
    assert all(check.active for check in checks), "the server should never have been shown a token it refuses"
    assert checks[-1].token == second.access_token


async def test_a_token_the_server_refuses_is_dropped_and_a_new_one_obtained(
    tmp_path: Path, kafka, topic, relay, dovecot, folder, authorization
):
    client = authorization.register(dovecot.user)  # an hour's tokens: only the server's refusal makes the watcher drop one
    oauth = oauth_section(authorization, client)
    config = mailbox_settings(
        tmp_path, kafka, topic, relay, dovecot, folder, reconnect_max_seconds=2, **signed_in_with("oauthbearer", oauth)
    )
    async with running(config) as (gateway, _):
        await idling(gateway)
        [first] = authorization.grants_of(client)
        authorization.revoke(first.access_token)  # an administrator revoked the sessions
        await asyncio.to_thread(dovecot.kick)
        await grants(authorization, client, 2, timeout=30)
        await idling(gateway, timeout=30)
        await append(dovecot, folder, raw(complaint_mail("Taken in after the token was revoked.")))
        await taken_in(gateway, 1)
    first, second = authorization.grants_of(client)
    refused = [check for check in authorization.checks_of(client) if not check.active]
    assert refused and {check.token for check in refused} == {first.access_token}
    assert second.access_token and not second.error


async def test_a_disabled_application_leaves_the_watcher_degraded_saying_why_and_no_secret_in_the_logs(
    tmp_path: Path, kafka, topic, relay, dovecot, folder, authorization, caplog
):
    client = authorization.register(dovecot.user)
    oauth = oauth_section(authorization, client)
    config = mailbox_settings(
        tmp_path, kafka, topic, relay, dovecot, folder, reconnect_max_seconds=2, **signed_in_with("xoauth2", oauth)
    )
    with caplog.at_level(logging.DEBUG):
        async with running(config) as (gateway, _):
            await idling(gateway)
            # The application's secret is revoked (or the app deleted): its tokens stop working, and no new one comes.
            authorization.disable(client)
            await asyncio.to_thread(dovecot.kick)

            async def refused() -> bool:
                return "invalid_client" in (watcher(gateway).health() or "")

            await wait_for(refused, timeout=30)
            mailbox = watcher(gateway)
            state, reason = mailbox.state, mailbox.health()
            component = gateway.supervisor.state(mailbox.name)
    assert state == "waiting to reconnect"
    assert reason is not None and reason.startswith("cannot sign in, no access token: the token endpoint refused the grant: invalid_client")
    assert client.client_id in reason  # the endpoint's description names the application
    assert component.state == "degraded" and component.detail == reason
    assert any(getattr(r, "event", None) == "imap_no_token" and r.levelno == logging.ERROR for r in caplog.records)
    issued = [grant.access_token for grant in authorization.grants_of(client) if grant.access_token]
    assert issued, "a token was in use before the application was disabled"
    for secret in [client.client_secret, *issued]:
        assert [r.name for r in caplog.records if secret in r.getMessage() or secret in str(vars(r))] == []


# --- the relay ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
async def test_acknowledgements_go_through_a_relay_that_wants_a_token(tmp_path: Path, kafka, topic, authorization, mechanism):
    relay = CapturingRelay(oauth=authorization)
    relay.start()
    try:
        client = authorization.register(OUR_ADDRESS)
        section = relay.config(auth=mechanism, username=OUR_ADDRESS, oauth=oauth_section(authorization, client))
        config = email_settings(tmp_path, kafka.bootstrap, topic, section)
        async with running(config):
            await smtp_send(config.email.smtp.port, complaint_mail())
            await smtp_send(config.email.smtp.port, complaint_mail("A second complaint.", subject="Second"))
            acknowledgements = await relay.wait_for(2)
            records = await read_topic(kafka.bootstrap, topic, expect=4)
    finally:
        relay.stop()
    assert [a.recipients for a in acknowledgements] == [[CUSTOMER], [CUSTOMER]]
    # Each session the relay saw signed in with the token; the second acknowledgement reuses the first's session,
    # or (sent at the same time) its token.
    assert relay.sign_ins and all(sign_in == SignIn(mechanism.upper(), OUR_ADDRESS, True) for sign_in in relay.sign_ins)
    assert len(relay.sign_ins) <= 2
    assert len(authorization.grants_of(client)) == 1, "the second acknowledgement should reuse the token"
    assert len(of_type(records, "acknowledged")) == 2


def acknowledgement(n: int) -> dict[str, Any]:
    message_id = f"<C-0000-000{n}.000000000000@example.test>"
    return {"to": CUSTOMER, "subject": "s", "text": "t", "locale": "en", "direction": "ltr", "message_id": message_id}


async def test_the_relay_token_is_replaced_before_it_expires_with_the_rotated_refresh_token(authorization, caplog):
    relay = CapturingRelay(oauth=authorization)
    relay.start()
    client = authorization.register(OUR_ADDRESS, expires_in=4, rotate_refresh_tokens=True)
    consented = authorization.consent(client)
    oauth = oauth_section(authorization, client, refresh_token=consented, refresh_before_seconds=2)
    sender = AcknowledgementSender(
        RelayConfig(**relay.config(auth="xoauth2", username=OUR_ADDRESS, oauth=oauth)), EmailLimitsConfig(), Metrics()
    )
    try:
        with caplog.at_level(logging.DEBUG):
            await sender.send_reply(acknowledgement(1))
            [first] = authorization.grants_of(client)
            await asyncio.sleep(max(0.0, first.at + 2.5 - time.time()))  # due for replacement, not expired
            await sender.send_reply(acknowledgement(2))
    finally:
        relay.stop()
    first, second = authorization.grants_of(client)
    assert second.at < first.expires_at
    assert first.refresh_token == consented and second.refresh_token == first.new_refresh_token != consented
    assert relay.sign_ins == [SignIn("XOAUTH2", OUR_ADDRESS, True)] * 2 and len(relay.messages) == 2
    assert any(getattr(r, "event", None) == "oauth_refresh_token_rotated" and r.levelno == logging.WARNING for r in caplog.records)
    for secret in [client.client_secret, consented, first.new_refresh_token, second.new_refresh_token, first.access_token]:
        assert [r.name for r in caplog.records if secret in r.getMessage() or secret in str(vars(r))] == []


async def test_a_token_the_relay_refuses_is_retried_later_with_a_new_one(authorization):
    relay = CapturingRelay(oauth=authorization)
    relay.start()
    client = authorization.register(OUR_ADDRESS)
    oauth = oauth_section(authorization, client)
    sender = AcknowledgementSender(
        RelayConfig(**relay.config(auth="oauthbearer", username=OUR_ADDRESS, oauth=oauth)), EmailLimitsConfig(), Metrics()
    )
    # A session per message, as with a relay that ends each one: a session already signed in would carry the second
    # acknowledgement whatever became of its token since.
    sender.connection.REUSE_MESSAGES = 1
    try:
        await sender.send_reply(acknowledgement(1))
        [first] = authorization.grants_of(client)
        authorization.revoke(first.access_token)
        with pytest.raises(TemporaryFailure, match="535"):
            await sender.send_reply(acknowledgement(2))
        await sender.send_reply(acknowledgement(2))  # what the reply loop's retry does
    finally:
        relay.stop()
    assert len(authorization.grants_of(client)) == 2
    assert relay.sign_ins == [SignIn("OAUTHBEARER", OUR_ADDRESS, accepted) for accepted in (True, False, True)]
    assert len(relay.messages) == 2


# --- the token provider and the configuration ----------------------------------------------------


async def test_an_outage_of_the_token_endpoint_is_waited_out_with_backoff_using_a_token_still_valid(authorization):
    client = authorization.register(OUR_ADDRESS, expires_in=60)
    now = [1000.0]
    tokens = AccessTokens(OAuthConfig(**oauth_section(authorization, client, refresh_before_seconds=20)), name="test", clock=lambda: now[0])
    first = await tokens.get()
    now[0] += 45  # due for replacement (from 40 s), valid until 60 s
    client.outage = [503, 503]
    assert await tokens.get() == first  # the endpoint failed: the current token serves on
    assert await tokens.get() == first  # within the backoff: the endpoint is not asked again
    assert len(authorization.grants_of(client)) == 2
    now[0] += 1.5  # the backoff (1 s) is over; the endpoint fails once more
    assert await tokens.get() == first
    now[0] += 2.5  # the next backoff (2 s) is over; the endpoint is back
    second = await tokens.get()
    assert second != first
    assert [g.error for g in authorization.grants_of(client)] == ["", "temporarily_unavailable", "temporarily_unavailable", ""]
    now[0] += 61  # expired; the endpoint is down and nothing valid is left
    client.outage = [502]
    with pytest.raises(TokenUnavailable, match="502"):
        await tokens.get()


async def test_a_refused_grant_is_a_typed_error_without_the_secret(authorization):
    client = authorization.register(OUR_ADDRESS)
    consented = authorization.consent(client)
    section = oauth_section(authorization, client, refresh_token="1//a-refresh-token-that-was-revoked")
    with pytest.raises(TokenRefused) as refused:
        await AccessTokens(OAuthConfig(**section), name="test").get()
    assert refused.value.error == "invalid_grant" and "expired or revoked" in str(refused.value)
    authorization.disable(client)
    with pytest.raises(TokenRefused) as refused:
        await AccessTokens(OAuthConfig(**oauth_section(authorization, client, refresh_token=consented)), name="test").get()
    assert refused.value.error == "invalid_client"
    assert client.client_secret not in str(refused.value) and consented not in str(refused.value)


def test_a_token_replaces_the_password_and_the_settings_say_where_it_comes_from():
    oauth = {"token_url": "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token", "client_id": "app",
             "client_secret": "s", "scope": SCOPE}  # fmt: skip
    mailbox = ImapMailboxConfig(name="m365", host="outlook.office365.com", username="complaints@contoso.com", auth="xoauth2", oauth=oauth)
    assert mailbox.password is None and mailbox.oauth is not None and mailbox.oauth.refresh_before_seconds == 300
    with pytest.raises(ValidationError, match=r"auth = xoauth2 needs an \[oauth\] section"):
        ImapMailboxConfig(name="m365", username="complaints@contoso.com", auth="xoauth2")
    with pytest.raises(ValidationError, match="auth = password needs password"):
        ImapMailboxConfig(name="plain", username="complaints@example.org")
    with pytest.raises(ValidationError, match="needs username"):
        RelayConfig(auth="xoauth2", oauth=oauth)
    with pytest.raises(ValidationError, match="must be https"):
        OAuthConfig(**{**oauth, "token_url": "http://login.microsoftonline.com/common/oauth2/v2.0/token"})
    with pytest.raises(ValidationError, match="needs client_secret"):
        OAuthConfig(**{**oauth, "client_secret": None})
    with pytest.raises(ValidationError, match="needs refresh_token"):
        OAuthConfig(**{**oauth, "grant": "refresh_token"})
