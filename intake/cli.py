"""The ``intake`` command: serve, schema, asyncapi, check-config, topics, spool status, dead-letters and find."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from intake import config as config_module
from intake import logs


def _settings(path: Path | None) -> config_module.Settings:
    return config_module.load(path)


def _config_path(value: str | None) -> Path | None:
    chosen = value or os.environ.get("INTAKE_CONFIG")
    return Path(chosen) if chosen else None


def _serve(args: argparse.Namespace) -> int:
    from intake import workers

    settings = _settings(args.config)
    logs.configure(settings.log_level, settings.log_format)
    count = args.workers if args.workers is not None else workers.default_count()
    if count < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return 2
    if count > 1 and args.worker_index is None:
        # The parent: the workers read the same configuration and environment.
        stop_timeout = settings.drain_seconds + settings.shutdown_grace_seconds + 15
        return workers.Workers(count, workers.serve_command(args.config), stop_timeout=stop_timeout).run()
    from intake.gateway import Gateway

    index = args.worker_index or 0
    _event_loop_runner()(Gateway(settings, worker=index, workers=count).serve())
    return 0


def _event_loop_runner():  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:  # not on every platform; the standard loop works, slower
        return asyncio.run
    return uvloop.run


def _schema(args: argparse.Namespace) -> int:
    from importlib.resources import files

    name = {
        "record": "complaint.v1.json",
        "command": "command.v1.json",
        "reply-outcome": "reply-outcome.v1.json",
        "feedback": "feedback.v1.json",
        "status-request": "status-request.v1.json",
    }[args.which]
    sys.stdout.write(files("intake.normalizer").joinpath(f"schema/{name}").read_text(encoding="utf-8"))
    return 0


def _asyncapi(args: argparse.Namespace) -> int:
    from intake.asyncapi import document

    print(json.dumps(document(_settings(args.config)), indent=2, ensure_ascii=False))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args.config)
    except ValidationError as error:
        print(f"configuration is invalid ({error.error_count()} problem(s)):", file=sys.stderr)
        for item in error.errors(include_url=False, include_input=False):
            where = ".".join(str(part) for part in item["loc"])
            print(f"  {where}: {item['msg']}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:  # unreadable file, TOML syntax
        print(f"cannot read the configuration: {error}", file=sys.stderr)
        return 2
    summary = {
        "http": f"{settings.http.host}:{settings.http.port}",
        "kafka": settings.kafka.bootstrap_servers,
        "topic": settings.kafka.topic,
        "dead_letter_topic": settings.kafka.dead_letter_topic,
        "outbound_topic": settings.kafka.outbound_topic if settings.outbound.enabled else "disabled",
        "spool": str(settings.spool.path),
        "webhook_partners": sorted(settings.webhook.partners) if settings.webhook.enabled else "disabled",
        "channels": {
            "webhook": settings.webhook.enabled,
            "web_form": settings.web_form.enabled,
            "email_smtp": f"{settings.email.smtp.host}:{settings.email.smtp.port}" if settings.email.smtp.enabled else False,
            "email_imap": [mailbox.name for mailbox in settings.email.imap],
            "email_acknowledgements": settings.email.enabled,
            "twilio": settings.twilio.enabled,
            "telegram": settings.telegram.mode if settings.telegram.enabled else False,
        },
    }
    print("configuration is valid")
    print(json.dumps(summary, indent=2))
    return 0


def _spool_status(args: argparse.Namespace) -> int:
    from intake.spool import Spool

    settings = _settings(args.config)
    if not settings.spool.path.exists():
        print(f"no spool at {settings.spool.path}", file=sys.stderr)
        return 1

    async def read() -> dict[str, object]:
        spool = Spool.from_config(settings.spool)
        await spool.open()
        try:
            status = await spool.status()
        finally:
            await spool.close()
        return {**dataclasses.asdict(status), "full": status.full, "path": str(settings.spool.path)}

    print(json.dumps(asyncio.run(read()), indent=2))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from intake import replay

    if bool(args.keys) == args.all:
        print("name the dead letters to replay, or --all", file=sys.stderr)
        return 2
    settings = _settings(args.config)
    try:
        queued = replay.queue(settings.spool.path, args.keys or None, channel=args.channel)
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 1
    missing = sorted(set(args.keys) - set(queued))
    print(json.dumps({"queued": queued, "not_dead_letters_or_queued_already": missing}, indent=2))
    return 1 if missing else 0


def _dead_letters(args: argparse.Namespace) -> int:
    from intake import inspection

    settings = _settings(args.config)
    try:
        if args.dead_letter_command == "list":
            print(json.dumps(inspection.dead_letters(settings.spool.path, limit=args.limit), indent=2, ensure_ascii=False))
            return 0
        described, raw = inspection.message(settings.spool.path, args.key, personal=args.personal or args.raw is not None)
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 1
    except inspection.NotFound:
        print(f"no message {args.key!r} in the spool", file=sys.stderr)
        return 1
    if args.raw is not None and raw is not None:
        Path(args.raw).write_bytes(raw)
        described["raw"]["written_to"] = args.raw
    if not (args.personal or args.raw is not None):
        described["context"]["note"] = "fields naming people are left out; --personal shows them"
    print(json.dumps(described, indent=2, ensure_ascii=False))
    return 0


def _find(args: argparse.Namespace) -> int:
    from intake import inspection

    settings = _settings(args.config)
    try:
        found = inspection.find(settings.spool.path, args.reference, personal=args.personal)
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 1
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    print(json.dumps(found, indent=2, ensure_ascii=False))
    return 0 if found["messages"] else 1


def _topics(args: argparse.Namespace) -> int:
    from intake import topics

    settings = _settings(args.config)
    try:
        reports = asyncio.run(topics.ensure(settings.kafka, create=not args.check))
    except topics.TopicsUnavailable as error:
        print(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {error}", file=sys.stderr)
        return 2
    print(json.dumps([report.as_dict() for report in reports], indent=2))
    return 0 if all(report.state in ("ok", "created") for report in reports) else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="intake", description="Omnichannel complaint intake gateway.")
    top.add_argument("--config", "-c", help="TOML configuration file (default: $INTAKE_CONFIG, else built-in defaults)")
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument(
        "--workers",
        type=int,
        help="gateway processes sharing the listening ports, each with its own spool (default: the cores this process may use)",
    )
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the parent for each worker
    serve.set_defaults(run=_serve)
    schema = commands.add_parser("schema", help="print a JSON Schema: the complaint record's (default), or the outbound commands'")
    schema.add_argument(
        "which", nargs="?", default="record", choices=("record", "command", "reply-outcome", "feedback", "status-request"),
        help="record: the complaint record; command: commands on the outbound topic; reply-outcome: reply.delivered / reply.failed; "
        "feedback: survey answers; status-request: status asked for",
    )  # fmt: skip
    schema.set_defaults(run=_schema)
    commands.add_parser(
        "asyncapi", help="print the AsyncAPI 3.0 document of the topics (headers, keys, payload schemas) for consumers"
    ).set_defaults(run=_asyncapi)
    commands.add_parser("check-config", help="validate the configuration and print a summary").set_defaults(run=_check_config)
    topics = commands.add_parser(
        "topics", help="create the topics intake writes to (partitions, replication, settings from [kafka]) and check them"
    )
    topics.add_argument("--check", action="store_true", help="only check: create nothing; exit 1 if one is missing or differs")
    topics.set_defaults(run=_topics)
    spool = commands.add_parser("spool", help="inspect the spool").add_subparsers(dest="spool_command", required=True)
    spool.add_parser("status", help="pending events, replies, dead letters, capacity").set_defaults(run=_spool_status)
    dead = spool.add_parser("dead-letters", help="messages kept but not readable as complaints").add_subparsers(
        dest="dead_letter_command", required=True
    )
    listing = dead.add_parser("list", help="newest first: key, channel, reference, size, why")
    listing.add_argument("--limit", type=int, default=100)
    listing.set_defaults(run=_dead_letters)
    show = dead.add_parser("show", help="one message by its spool key (channel:id)")
    show.add_argument("key")
    show.add_argument("--personal", action="store_true", help="also show the channel's fields that name people")
    show.add_argument("--raw", metavar="FILE", help="write the raw bytes, exactly as received, to FILE")
    show.set_defaults(run=_dead_letters)
    replay = dead.add_parser(
        "replay",
        help="after a fix, normalise dead letters again on their channel's path (the running gateway takes them within a second)",
    )
    replay.add_argument("keys", nargs="*", metavar="KEY", help="spool keys (channel:id) from `dead-letters list`")
    replay.add_argument("--all", action="store_true", help="every dead letter (of --channel, if given)")
    replay.add_argument("--channel", help="only this channel's, with --all")
    replay.set_defaults(run=_replay)
    find = spool.add_parser("find", help="what the spool knows of a reference, e.g. C-7K3M-9QXA")
    find.add_argument("reference")
    find.add_argument("--personal", action="store_true", help="also show the channel's fields that name people")
    find.set_defaults(run=_find)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.config = _config_path(args.config)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
