"""The email channel: its configuration, and the SMTP listener, IMAP mailboxes and acknowledgement sender it builds.

Mail comes in two ways, an SMTP listener (``smtp.py``) and IMAP mailboxes
(``imap.py``), and is acknowledged by email through a relay (``reply.py``).
Where basic authentication is off (Microsoft 365, Gmail), mailboxes and the
relay sign in with OAuth 2.0 access tokens (``oauth.py``).
Both ways use the Message-ID as the channel message id, so one mail received
through both is one complaint.

This module only imports pydantic: ``intake.config`` imports it, and the
listener and watchers import ``intake.config`` back through ``intake.reception``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

if TYPE_CHECKING:
    from intake.config import Settings
    from intake.gateway import Gateway
    from intake.supervisor import Component
    from intake.replies import ReplySender
    from intake.channels.email.reply import RelayConnection
    from intake.twoway import OutboundSender

__all__ = [
    "EmailChannel",
    "EmailConfig",
    "ImapMailboxConfig",
    "EmailLimitsConfig",
    "OAuthConfig",
    "RelayConfig",
    "SmtpListenerConfig",
    "build",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SmtpListenerConfig(_Section):
    enabled: bool = Field(False, description="Run the SMTP listener (mail delivered to the gateway by an MTA or directly).")
    host: str = Field("127.0.0.1", description="Address the SMTP listener binds (0.0.0.0 in a container).")
    port: int = Field(2525, ge=0, le=65535, description="Port of the SMTP listener (25 behind a firewall, 2525 on a laptop).")
    hostname: str | None = Field(None, description="Name in the greeting and EHLO answer; default: this host's FQDN.")
    accept: list[str] = Field(
        default_factory=list,
        description="Addresses (complaints@example.com) or domains (example.com) mail is accepted for, case-insensitive; "
        "every other recipient gets 550, so the listener is never an open relay.",
    )
    max_message_bytes: int = Field(
        25 * 1024 * 1024, ge=1024, description="Largest message accepted, advertised as SIZE; larger ones get 552."
    )
    timeout_seconds: float = Field(
        300, gt=0, description="An idle SMTP session is closed after this long (RFC 5321 asks 5 minutes)."
    )
    tls_cert: Path | None = Field(None, description="PEM certificate (chain) offering STARTTLS; with tls_key.")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert.")
    require_starttls: bool = Field(False, description="Refuse mail from clients that did not STARTTLS first (needs tls_cert).")
    auth_required: bool = Field(False, description="Only authenticated clients may send (AUTH PLAIN/LOGIN against `users`).")
    auth_require_tls: bool = Field(True, description="Offer AUTH only inside STARTTLS, so passwords never travel in clear.")
    users: dict[str, SecretStr] = Field(default_factory=dict, description="SMTP AUTH login to its secret.")

    @field_validator("accept")
    @classmethod
    def _lower_case(cls, accept: list[str]) -> list[str]:
        cleaned = [entry.strip().lstrip("@").lower() for entry in accept if entry.strip()]
        for entry in cleaned:
            if " " in entry or entry.count("@") > 1:
                raise ValueError(f"{entry!r} is neither an address nor a domain")
        return cleaned

    @model_validator(mode="after")
    def _consistent(self) -> SmtpListenerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.require_starttls and self.tls_cert is None:
            raise ValueError("require_starttls needs tls_cert and tls_key")
        if self.auth_required and not self.users:
            raise ValueError("auth_required needs at least one entry in users")
        if self.auth_required and self.auth_require_tls and self.tls_cert is None:
            raise ValueError("auth_required with auth_require_tls needs tls_cert and tls_key")
        if self.enabled and not self.accept:
            raise ValueError("the SMTP listener needs `accept`: the addresses or domains it takes mail for")
        return self


# The loopback names a token endpoint may be reached at without TLS (a local stand-in, a test); anywhere else the
# client secret and the tokens would travel in clear.
_LOOPBACK = ("127.0.0.1", "::1", "[::1]", "localhost")


class OAuthConfig(_Section):
    """How an access token is obtained for XOAUTH2 / OAUTHBEARER (RFC 6749), for a mailbox or the relay.

    Microsoft 365 (Exchange Online), no user in the loop: ``grant = "client_credentials"``,
    ``token_url = "https://login.microsoftonline.com/<tenant id>/oauth2/v2.0/token"``,
    ``scope = "https://outlook.office365.com/.default"``, the app registration's client id and secret; the
    mailbox's ``username`` is its address. Gmail (and Google Workspace without domain-wide delegation):
    ``grant = "refresh_token"``, ``token_url = "https://oauth2.googleapis.com/token"``,
    ``scope = "https://mail.google.com/"``, the OAuth client's id and secret and the refresh token an operator
    obtained once through the consent flow.
    """

    token_url: str = Field(
        ...,
        description="The token endpoint. Microsoft 365: https://login.microsoftonline.com/<tenant id>/oauth2/v2.0/token; "
        "Google: https://oauth2.googleapis.com/token. https, except on the loopback interface.",
    )
    client_id: str = Field(..., min_length=1, description="The application (client) id of the app registration or OAuth client.")
    client_secret: SecretStr | None = Field(
        None, description="The client secret (its value, not its id); needed for client_credentials, and by Google always."
    )
    grant: Literal["client_credentials", "refresh_token"] = Field(
        "client_credentials",
        description="client_credentials: the application itself (Microsoft 365, RFC 6749 §4.4); refresh_token: a token "
        "an operator obtained once by consenting as the mailbox's user (Gmail, RFC 6749 §6).",
    )
    refresh_token: SecretStr | None = Field(None, description="The refresh token, for grant = refresh_token.")
    scope: str = Field(
        "",
        description="Scopes asked for, space-separated. Microsoft 365 client credentials: "
        "https://outlook.office365.com/.default; Gmail: https://mail.google.com/ (or empty: the refresh token's own).",
    )
    refresh_before_seconds: float = Field(
        300,
        ge=0,
        description="A token is replaced this long before it expires (at most half its lifetime), so none expires in use.",
    )
    timeout_seconds: float = Field(30, gt=0, description="Bound on one request to the token endpoint.")

    @field_validator("token_url")
    @classmethod
    def _secure_endpoint(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("token_url must be an https URL")
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
            raise ValueError("token_url must be https: the client secret and the tokens travel in it")
        return url

    @model_validator(mode="after")
    def _grant_has_its_secret(self) -> OAuthConfig:
        if self.grant == "refresh_token" and self.refresh_token is None:
            raise ValueError("grant = refresh_token needs refresh_token")
        if self.grant == "client_credentials" and self.client_secret is None:
            raise ValueError("grant = client_credentials needs client_secret")
        return self


# How a client signs in to the IMAP server or the relay: the password (or app password), or an OAuth 2.0 access
# token through SASL XOAUTH2 (Google's and Microsoft's) or OAUTHBEARER (RFC 7628).
Authentication = Literal["password", "xoauth2", "oauthbearer"]


class ImapMailboxConfig(_Section):
    name: str = Field(
        ..., pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Names this mailbox in the spool's cursor and in records' origin."
    )
    host: str = Field("127.0.0.1", description="IMAP server.")
    port: int | None = Field(None, ge=1, le=65535, description="Default: 993 with security=tls, else 143.")
    security: Literal["tls", "starttls", "none"] = Field(
        "tls", description="Implicit TLS (993), STARTTLS, or none (loopback only)."
    )
    ca_file: Path | None = Field(None, description="CA bundle to verify the server with; default: the system's.")
    username: str = Field(..., description="Login of the mailbox; with OAuth, the mailbox's address.")
    auth: Authentication = Field(
        "password",
        description="password: LOGIN with `password`; xoauth2 or oauthbearer: SASL with an access token from `oauth` "
        "(Microsoft 365 and Gmail, where basic authentication is off).",
    )
    password: SecretStr | None = Field(None, description="Password or app password of the mailbox, for auth = password.")
    oauth: OAuthConfig | None = Field(None, description="Where the access token comes from, for auth = xoauth2 or oauthbearer.")
    folder: str = Field("INBOX", description="Folder watched for complaints.")
    after_import: Literal["seen", "move"] = Field(
        "seen", description="Once a message is safely in the spool: flag it \\Seen, or move it to `move_to`."
    )
    move_to: str = Field(
        "Imported", description="Folder imported messages are moved to (created when missing) with after_import=move."
    )
    idle_seconds: float = Field(
        540,
        ge=1,
        le=600,
        description="An IDLE is re-issued this often (RFC 2177 servers drop it after 30 minutes; 10 at most here).",
    )
    poll_seconds: float = Field(60, ge=0.2, description="Polling interval for servers without IDLE.")
    timeout_seconds: float = Field(60, gt=0, description="Socket timeout of one IMAP command.")
    reconnect_max_seconds: float = Field(300, ge=1, description="Cap of the backoff between reconnection attempts.")

    @property
    def cursor_name(self) -> str:
        return f"imap:{self.name}"

    @model_validator(mode="after")
    def _move_elsewhere(self) -> ImapMailboxConfig:
        if self.after_import == "move" and self.move_to == self.folder:
            raise ValueError("move_to must be another folder than the one watched")
        return self

    @model_validator(mode="after")
    def _credentials(self) -> ImapMailboxConfig:
        if self.auth == "password" and self.password is None:
            raise ValueError("auth = password needs password")
        if self.auth != "password" and self.oauth is None:
            raise ValueError(f"auth = {self.auth} needs an [oauth] section: where the access token comes from")
        return self


class RelayConfig(_Section):
    enabled: bool = Field(
        False,
        description="Send email acknowledgements even when neither the SMTP listener nor an IMAP mailbox is on "
        "(for channels that also acknowledge by email, e.g. the web form). On automatically with either.",
    )
    host: str = Field("127.0.0.1", description="SMTP relay acknowledgements are sent through.")
    port: int = Field(
        25, ge=1, le=65535, description="Port of the relay (587 for submission with STARTTLS, 465 for implicit TLS)."
    )
    security: Literal["auto", "starttls", "tls", "none"] = Field(
        "auto", description="auto: STARTTLS when the relay offers it; starttls: required; tls: implicit TLS; none: never."
    )
    validate_certs: bool = Field(True, description="Verify the relay's certificate.")
    ca_file: Path | None = Field(None, description="CA bundle to verify the relay with; default: the system's.")
    username: str | None = Field(
        None, description="SMTP AUTH login at the relay, if it asks for one; with OAuth, the sending mailbox's address."
    )
    auth: Authentication = Field(
        "password",
        description="password: AUTH PLAIN/LOGIN with username and password (none without a username); xoauth2 or "
        "oauthbearer: SASL with an access token from `oauth` (Microsoft 365: smtp.office365.com, Gmail: smtp.gmail.com).",
    )
    password: SecretStr | None = Field(None, description="SMTP AUTH password at the relay.")
    oauth: OAuthConfig | None = Field(None, description="Where the access token comes from, for auth = xoauth2 or oauthbearer.")
    timeout_seconds: float = Field(30, gt=0, description="Bound on one delivery attempt; a timeout is retried from the spool.")
    from_address: str = Field("complaints@localhost", description="From: of acknowledgements; the address customers reply to.")
    from_name: str = Field("", description="Display name in From: (default: the organisation's name).")
    envelope_sender: str = Field(
        "",
        description="MAIL FROM of acknowledgements. Empty is the null sender <> that RFC 3834 recommends for automatic "
        "responses (bounces of an acknowledgement go nowhere, responders do not answer it); "
        "set an address if the relay refuses <>.",
    )
    message_id_domain: str | None = Field(None, description="Domain of our Message-IDs; default: the domain of from_address.")

    @model_validator(mode="after")
    def _credentials(self) -> RelayConfig:
        if self.auth != "password":
            if self.oauth is None:
                raise ValueError(f"auth = {self.auth} needs an [oauth] section: where the access token comes from")
            if not self.username:
                raise ValueError(f"auth = {self.auth} needs username: the address the token is for")
        return self

    @property
    def domain(self) -> str:
        return self.message_id_domain or self.from_address.rpartition("@")[2] or "localhost"


class EmailLimitsConfig(_Section):
    """How many acknowledgements go out within a window: a loop with an auto-responder, or a flood of mails forging
    strangers' addresses, must die out by itself rather than make the gateway send mail to people who never wrote."""

    acknowledgements_per_recipient: int = Field(
        10, ge=1, description="At most this many acknowledgements to one address within the window (Zammad's 10 in 10 minutes); "
        "beyond it they are suppressed, so a loop with a misconfigured auto-responder dies out."
    )
    acknowledgements_per_domain: int = Field(
        100,
        ge=1,
        description="At most this many acknowledgements to the addresses of one domain within the window: mails naming many "
        "forged addresses at one domain do not turn into as many acknowledgements (backscatter). Raise it where many "
        "customers write from one provider's domain.",
    )
    acknowledgements_total: int = Field(
        1000,
        ge=1,
        description="At most this many acknowledgements in all within the window, whichever the addresses: the ceiling on "
        "how much mail forged complaints can make the gateway send. Set it above the busiest window of real complaints.",
    )
    acknowledgement_window_seconds: float = Field(600, gt=0, description="The window of the limits here.")
    outbound_total: int = Field(
        5000,
        ge=1,
        description="At most this many emails from downstream's commands (the team's messages, statuses, surveys) within the "
        "window, counted apart from acknowledgements: a guard against a runaway producer. Beyond it they wait and are sent "
        "later, never dropped. The per-recipient and per-domain limits do not apply to them: nobody outside can make them.",
    )


class EmailConfig(_Section):
    smtp: SmtpListenerConfig = Field(default_factory=SmtpListenerConfig)
    imap: list[ImapMailboxConfig] = Field(default_factory=list, description="Mailboxes watched for complaints; none by default.")
    relay: RelayConfig = Field(default_factory=RelayConfig)
    limits: EmailLimitsConfig = Field(default_factory=EmailLimitsConfig)

    @field_validator("imap")
    @classmethod
    def _unique_names(cls, mailboxes: list[ImapMailboxConfig]) -> list[ImapMailboxConfig]:
        names = [mailbox.name for mailbox in mailboxes]
        if len(names) != len(set(names)):
            raise ValueError("mailbox names must be unique: each keeps its own position in the spool")
        return mailboxes

    @property
    def receiving(self) -> bool:
        return self.smtp.enabled or bool(self.imap)

    @property
    def enabled(self) -> bool:
        return self.receiving or self.relay.enabled


@dataclass
class EmailChannel:
    """What the gateway runs for email: long-running services and the acknowledgement sender."""

    services: list[Component] = field(default_factory=list)
    sender: ReplySender | None = None
    outbound: OutboundSender | None = None  # what downstream's commands send by email (intake.twoway)
    connection: RelayConnection | None = None  # the relay sessions both send through; closed when the gateway stops


def build(settings: Settings, gateway: Gateway) -> EmailChannel:
    """Build the parts ``settings.email`` asks for, on the gateway's spool, reception and attachment store."""
    # Imported here: this module is imported by intake.config, which these import back.
    from intake.channels.email.imap import MailboxWatcher
    from intake.channels.email.inbound import Inbound
    from intake.channels.email.reply import AcknowledgementSender, OutboundEmailSender, RelayConnection
    from intake.channels.email.smtp import SmtpListener

    config = settings.email
    channel = EmailChannel()
    if not config.enabled:
        return channel
    # One connection for both: one access token, one TLS context.
    connection = channel.connection = RelayConnection(config.relay)
    organisation = settings.acknowledgement.organisation
    channel.sender = AcknowledgementSender(config.relay, config.limits, gateway.metrics, organisation=organisation, connection=connection)
    channel.outbound = OutboundEmailSender(config.relay, config.limits, organisation=organisation, connection=connection)
    inbound = Inbound(config, gateway.reception, gateway.attachments)
    if config.smtp.enabled:
        channel.services.append(SmtpListener(config.smtp, inbound, gateway.metrics))
    for mailbox in config.imap:
        channel.services.append(MailboxWatcher(mailbox, inbound, gateway.spool))
    return channel
