"""The gateway's configuration: one typed object from a TOML file and INTAKE_* environment variables.

Precedence: environment, then the TOML file, then the defaults below, which
start a gateway on a laptop with no configuration at all. Nested options are
set from the environment with a double underscore, e.g.
``INTAKE_KAFKA__BOOTSTRAP_SERVERS=broker:9092`` or
``INTAKE_WEBHOOK__PARTNERS='{"acme": {"secrets": ["..."]}}'``.

Secrets can stay out of the environment, as Docker and Kubernetes secrets
are files: ``INTAKE_KAFKA__SASL_PASSWORD_FILE=/run/secrets/kafka`` reads the
option from that file, and every file in ``$INTAKE_SECRETS_DIR`` named like a
variable (``INTAKE_TELEGRAM__TOKEN``, any case) sets it. A variable set
directly wins over a file; both a variable and its ``_FILE`` is an error.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from intake.channels.email import EmailConfig
from intake.channels.telegram import TelegramConfig
from intake.channels.twilio import TwilioConfig
from intake.channels.web_form import WebFormConfig
from intake.twoway import Status


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpConfig(_Section):
    host: str = Field("127.0.0.1", description="Address the HTTP server listens on (0.0.0.0 in a container).")
    port: int = Field(8080, ge=0, le=65535, description="Port of the HTTP server: webhooks, form, health, metrics.")
    public_base_url: str | None = Field(
        None,
        description="The URL the outside world uses to reach this gateway (behind a TLS proxy), e.g. https://complaints.example.com. "
        "Signatures that cover the URL (Twilio) are checked against it.",
    )
    body_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="How long the body of a webhook request (partner, Twilio, Telegram, a form without files) may take to arrive "
        "once its headers have, and how long a form upload may pause: a sender that trickles it holds a connection and memory. "
        "Past it a webhook is answered 408, the form comes back with what was typed.",
    )
    idle_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="How long a connection may stay open without a whole request's headers: idle between requests, or "
        "sending its headers this slowly (a slowloris holds a connection, and a process has only so many). Past it the "
        "connection is closed; a request being answered is never cut.",
    )


class KafkaConfig(_Section):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list of Kafka brokers.")
    topic: str = Field("complaints", description="Topic for complaints, follow-ups and acknowledgement events.")
    dead_letter_topic: str = Field(
        "complaints.dead-letter", description="Topic for messages the normalizer rejected, and for outbound commands intake refused."
    )
    outbound_topic: str = Field(
        "complaints.outbound",
        description="Topic intake consumes commands from (messages, status changes, surveys for complainants), keyed by reference.",
    )
    outbound_group: str = Field(
        "intake-outbound", description="Consumer group of the outbound topic; every gateway of one deployment uses the same."
    )
    client_id: str = Field("intake", description="Kafka client id (shows in broker logs and quotas).")
    linger_ms: int = Field(5, ge=0, description="How long the producer waits to fill a batch.")
    max_request_size: int = Field(1024 * 1024, ge=1024, description="Largest produce request; attachments never travel inline.")
    window: int = Field(1000, ge=1, description="Events sent before waiting for Kafka's acknowledgements.")
    send_timeout_seconds: float = Field(10.0, gt=0, description="Bound on one send call (metadata wait, full buffer).")
    stall_seconds: float = Field(5.0, gt=0, description="Unacknowledged this long, Kafka is reported unavailable.")
    create_topics: bool = Field(
        True,
        description="Create the topics intake writes to when they are missing (at start, and by `intake topics`), with the "
        "settings below. Off: they must exist; /readyz names a missing one.",
    )
    partitions: int = Field(
        12,
        ge=1,
        description="Partitions of a topic intake creates. Order holds per complaint reference on any count; consumers in one "
        "group can use at most this many instances. Choose it once: changing it later moves references between partitions.",
    )
    replication_factor: int = Field(
        -1, ge=-1, description="Replicas of a topic intake creates; -1: 3, or as many as there are brokers when fewer."
    )
    min_insync_replicas: int | None = Field(
        None,
        ge=1,
        description="min.insync.replicas of a topic intake creates (none: the broker's default). With acks=all, 2 of 3 replicas "
        "keeps an acknowledged complaint through the loss of a broker.",
    )
    topic_configs: dict[str, str] = Field(
        default_factory=dict,
        description='Further settings of a topic intake creates, e.g. {"retention.ms" = "2592000000"} (30 days).',
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = Field(None, description="CA bundle for SSL / SASL_SSL.")

    def security(self) -> dict[str, Any]:
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            import ssl

            options["ssl_context"] = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        return options


class SpoolConfig(_Section):
    path: Path = Field(Path(".local/intake/spool.sqlite3"), description="The spool's SQLite file; keep it on a persistent volume.")
    max_pending_events: int = Field(100_000, ge=1, description="Unpublished events allowed before channels push back (503/451).")
    max_pending_bytes: int = Field(512 * 1024 * 1024, ge=1024, description="Unpublished bytes allowed before channels push back.")
    max_total_bytes: int = Field(
        2048 * 1024 * 1024,
        ge=32 * 1024 * 1024,
        description="The most the spool takes on its disk, all told: raw messages, unpublished events, replies, "
        "dead letters, SQLite's WAL (up to 5 MiB) and a 4 MiB reserve kept so that a full disk cannot stop publishing. "
        "A smaller disk is a smaller bound. Near it, the oldest raw messages whose events are published and replies sent "
        "are pruned early, even inside retention_hours; channels push back (503/451) only when nothing can give way. "
        "Dead letters are never pruned (each is the only copy of its message): when they fill the spool, it refuses "
        "complaints until they are replayed or removed. At least twice max_pending_bytes, since unpublished events "
        "come with their raw messages.",
    )
    retention_hours: float = Field(
        168,
        gt=0,
        description="Raw messages are kept this long after publishing; redeliveries within it are recognised. "
        "Shorter when max_total_bytes or the disk runs out first.",
    )
    synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="FULL survives power loss; NORMAL only a process crash (faster on slow disks)."
    )

    @model_validator(mode="after")
    def _room_for_raw_messages(self) -> SpoolConfig:
        if self.max_total_bytes < 2 * self.max_pending_bytes:
            raise ValueError(
                f"max_total_bytes ({self.max_total_bytes}) must be at least twice max_pending_bytes ({self.max_pending_bytes}): "
                "unpublished events come with their raw messages, which cannot be pruned before the events are published"
            )
        return self


class AcknowledgementConfig(_Section):
    organisation: str = Field("", description="Your organisation's name, as the acknowledgement says it.")
    response_days: int = Field(5, ge=1, le=90, description="Working days within which the complainant hears back.")
    default_locale: str = Field("en", description="Language used when the complainant's is unknown or unsupported.")
    max_attempts: int = Field(
        12, ge=1, le=100, description="Tries to deliver an acknowledgement that is sent later (email, Telegram) before it is recorded as failed."
    )
    retry_first_seconds: float = Field(2.0, gt=0, description="Wait after the first failed try; doubled after each further one.")
    retry_max_seconds: float = Field(900.0, gt=0, description="Longest wait between two tries of one acknowledgement.")


class OutboundConfig(_Section):
    """Delivering downstream's commands to complainants (intake.delivery)."""

    enabled: bool = Field(True, description="Consume the outbound topic and deliver its commands (in worker 0).")
    max_attempts: int = Field(12, ge=1, le=100, description="Tries to deliver one command before it is reported as reply.failed.")
    retry_first_seconds: float = Field(2.0, gt=0, description="Wait after the first failed try; doubled after each further one.")
    retry_max_seconds: float = Field(900.0, gt=0, description="Longest wait between two tries of one command.")
    concurrency: int = Field(8, ge=1, le=256, description="Commands delivered side by side (never two for one complaint).")
    whatsapp_template_sid: str | None = Field(
        None,
        pattern=r"^HX[0-9a-fA-F]{32}$",
        description="Content SID of an approved WhatsApp template, sent instead of free text outside WhatsApp's 24-hour "
        "customer-service window. Unset: such messages go to another contact the complainant gave, or fail.",
    )
    whatsapp_template_variables: dict[str, str] = Field(
        default_factory=lambda: {"1": "{reference}"},
        description='The template\'s variables: {"1": "{reference}"}; {reference}, {status} and {text} are filled in.',
    )
    survey_on: list[Status] = Field(
        default_factory=list, description='Statuses whose delivery is followed by a satisfaction survey, e.g. ["resolved", "closed"].'
    )
    route_retention_days: float = Field(
        400, gt=0, description="How long a complaint's route (how to reach its complainant), status and surveys are kept after its last message."
    )
    command_retention_days: float = Field(
        30, gt=0, description="How long a delivered command's ce_id is kept: a redelivery within it is recognised and not sent again."
    )


class AttachmentsConfig(_Section):
    directory: Path = Field(Path(".local/intake/attachments"), description="Where attachment bytes are stored (a shared volume on several replicas).")
    max_bytes: int = Field(25 * 1024 * 1024, ge=1024, description="Largest attachment kept.")
    max_count: int = Field(20, ge=0, description="Most attachments kept per message.")


class PartnerConfig(_Section):
    secrets: list[SecretStr] = Field(..., min_length=1, description="HMAC secrets; more than one while rotating.")
    accept_v1: bool = Field(
        False,
        description="For migration only: also accept v1 signatures (over <timestamp>.<body>) from this partner. v1 does not "
        "cover the Idempotency-Key, so a request captured within the replay window can be replayed under a new key as a new "
        "complaint. Turn it off once the partner signs v2 (over <timestamp>.<Idempotency-Key>.<body>).",
    )
    callback_url: HttpUrl | None = Field(
        None,
        description="Where downstream's messages, statuses and surveys for this partner's complaints are POSTed, signed "
        "like the partner's own requests (v2). https, except on the loopback interface. None: nothing is sent back.",
    )
    callback_secrets: list[SecretStr] = Field(
        default_factory=list,
        description="HMAC secrets of the callback, the partner's to verify with; not the ones it signs to us with. The first "
        "signs; keep the old one second while the partner moves to the new one. Needed with callback_url.",
    )
    callback_timeout_seconds: float = Field(10.0, gt=0, le=120, description="Bound on one callback request; a timeout is retried.")

    @field_validator("secrets", "callback_secrets")
    @classmethod
    def _long_enough(cls, secrets: list[SecretStr]) -> list[SecretStr]:
        for secret in secrets:
            if len(secret.get_secret_value()) < 16:
                raise ValueError("a webhook secret must be at least 16 characters")
        return secrets

    @model_validator(mode="after")
    def _callback_complete(self) -> PartnerConfig:
        if self.callback_url is None:
            return self
        if not self.callback_secrets:
            raise ValueError("callback_url needs callback_secrets: the partner must be able to tell our callbacks from forgeries")
        if self.callback_url.scheme != "https" and self.callback_url.host not in ("127.0.0.1", "::1", "[::1]", "localhost"):
            raise ValueError("callback_url must be https: the complainant's messages travel in it")
        own = {secret.get_secret_value() for secret in self.secrets}
        if any(secret.get_secret_value() in own for secret in self.callback_secrets):
            # One secret both ways would let anyone who captured a callback sign complaints as the partner, and back.
            raise ValueError("callback_secrets must differ from secrets")
        return self


class WebhookConfig(_Section):
    enabled: bool = True
    partners: dict[str, PartnerConfig] = Field(
        default_factory=dict, description="Partner name (used in the URL /webhook/<name>) to its secrets."
    )
    max_body_bytes: int = Field(256 * 1024, ge=1024, description="Larger bodies get 413.")
    replay_window_seconds: int = Field(300, ge=10, description="A signature older or newer than this is refused.")

    @field_validator("partners")
    @classmethod
    def _names(cls, partners: dict[str, PartnerConfig]) -> dict[str, PartnerConfig]:
        import re

        for name in partners:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", name):
                raise ValueError(f"partner name {name!r}: use lower-case letters, digits, - and _")
        return partners


class Settings(BaseSettings):
    """Everything ``intake serve`` needs; see deploy/intake.example.toml for a commented example."""

    model_config = SettingsConfigDict(env_prefix="INTAKE_", env_nested_delimiter="__", extra="forbid")

    source: str = Field("urn:intake", description="CloudEvents ce_source prefix; the channel is appended.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = Field("json", description="json for machines, text for a terminal.")
    shutdown_grace_seconds: float = Field(15.0, gt=0, description="How long in-flight work may take on shutdown.")
    drain_seconds: float = Field(
        2.0,
        ge=0,
        description="On SIGTERM, how long the HTTP listener keeps answering 503 with Retry-After (and closing keep-alive "
        "connections) before it closes, so a load balancer moves clients elsewhere and no request goes unanswered.",
    )
    http: HttpConfig = Field(default_factory=HttpConfig)
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    acknowledgement: AcknowledgementConfig = Field(default_factory=AcknowledgementConfig)
    attachments: AttachmentsConfig = Field(default_factory=AttachmentsConfig)
    outbound: OutboundConfig = Field(default_factory=OutboundConfig)
    webhook: WebhookConfig = Field(default_factory=WebhookConfig)
    # Channel sections follow, one line each.
    web_form: WebFormConfig = Field(default_factory=WebFormConfig)
    email: EmailConfig = Field(default_factory=EmailConfig)
    twilio: TwilioConfig = Field(default_factory=TwilioConfig)
    telegram: TelegramConfig = Field(default_factory=TelegramConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init values; the environment (with secret files) overrides it.
        return _Environment(settings_cls), init_settings


# Variables of the program itself, not options.
_NOT_OPTIONS = frozenset({"INTAKE_CONFIG", "INTAKE_SECRETS_DIR"})


class _Environment(EnvSettingsSource):
    """INTAKE_* variables, plus options read from files (``*_FILE`` and ``$INTAKE_SECRETS_DIR``); an unknown section is an error."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        variables = {name.upper(): value for name, value in os.environ.items() if name.upper().startswith("INTAKE_")}
        merged: dict[str, str] = {}
        directory = os.environ.get("INTAKE_SECRETS_DIR")
        if directory:
            for path in sorted(Path(directory).iterdir()):
                name = path.name.upper()
                if name.startswith("INTAKE_") and name not in _NOT_OPTIONS and path.is_file():
                    merged[name] = _read_secret(path, name)
        for name, value in variables.items():
            if name.endswith("_FILE") and name not in _NOT_OPTIONS:
                option = name.removesuffix("_FILE")
                if option in variables:
                    raise ValueError(f"both {option} and {name} are set; keep one")
                merged[option] = _read_secret(Path(value), name)
        merged.update({name: value for name, value in variables.items() if not name.endswith("_FILE")})
        sections = set(self.settings_cls.model_fields)
        for name in merged:
            if name in _NOT_OPTIONS:
                continue
            section = name.removeprefix("INTAKE_").split("__", 1)[0].lower()
            if section not in sections:
                raise ValueError(f"{name}: no option or section {section!r} (known: {', '.join(sorted(sections))})")
        return {name.lower(): value for name, value in merged.items()}


def _read_secret(path: Path, variable: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{variable}: cannot read {path}: {type(error).__name__}") from None
    return text.removesuffix("\n").removesuffix("\r")  # the newline an editor or `echo` leaves at the end


def load(path: Path | None = None) -> Settings:
    """Read the TOML file (if any) and the environment; raises pydantic.ValidationError naming bad options."""
    values: dict[str, Any] = {}
    if path is not None:
        with path.open("rb") as file:
            values = tomllib.load(file)
    return Settings(**values)
