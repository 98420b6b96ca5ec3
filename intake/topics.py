"""The Kafka topics intake writes to: created with the partitions, replication and settings the operator chose, or checked.

Relying on the broker's auto-creation gives a topic the broker's defaults
(often one partition, replication factor one, no ``min.insync.replicas``),
and where auto-creation is off, a producer waits for a topic that never
comes while the spool fills. ``intake topics`` and the publisher both go
through :func:`ensure`: missing topics are created (unless told not to), and
every topic is compared with the configuration.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from intake.config import KafkaConfig

# CreateTopics answers these for a topic that another gateway created a moment before: not a failure.
_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicReport:
    name: str
    state: str  # ok | created | missing | different
    partitions: int | None = None
    replication_factor: int | None = None
    min_insync_replicas: str | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


class TopicsUnavailable(Exception):
    """The cluster could not be asked (unreachable, refused): nothing is known about the topics."""


def wanted(kafka: KafkaConfig) -> list[str]:
    # The outbound topic too: intake reads it, but a consumer group waits in silence for a topic that is not there.
    return list(dict.fromkeys([kafka.topic, kafka.dead_letter_topic, kafka.outbound_topic]))


def _settings(kafka: KafkaConfig) -> dict[str, str]:
    configs = dict(kafka.topic_configs)
    if kafka.min_insync_replicas is not None:
        configs["min.insync.replicas"] = str(kafka.min_insync_replicas)
    return configs


async def ensure(kafka: KafkaConfig, *, create: bool, timeout: float = 15.0) -> list[TopicReport]:
    """Create what is missing (when ``create``) and report on every topic; raises TopicsUnavailable."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=kafka.bootstrap_servers, client_id=f"{kafka.client_id}-admin", request_timeout_ms=int(timeout * 1000), **kafka.security()
    )
    try:
        await asyncio.wait_for(admin.start(), timeout=timeout)
        return await asyncio.wait_for(_ensure(admin, kafka, create), timeout=timeout)
    except (KafkaError, OSError, asyncio.TimeoutError) as error:
        raise TopicsUnavailable(f"{type(error).__name__}: {error}") from None
    finally:
        try:
            await asyncio.wait_for(admin.close(), timeout=5)
        except (KafkaError, OSError, asyncio.TimeoutError):
            pass  # closing a client to an unreachable cluster: nothing left to release


async def _ensure(admin: AIOKafkaAdminClient, kafka: KafkaConfig, create: bool) -> list[TopicReport]:
    names = wanted(kafka)
    # The whole listing, not a lookup by name: a metadata request naming a topic makes such brokers create it.
    existing = set(await admin.list_topics())
    missing = [name for name in names if name not in existing]
    reports: dict[str, TopicReport] = {}
    if missing and create:
        replication = kafka.replication_factor
        if replication == -1:
            replication = min(3, len((await admin.describe_cluster())["brokers"]) or 1)
        response = await admin.create_topics(
            [NewTopic(name, kafka.partitions, replication, topic_configs=_settings(kafka)) for name in missing]
        )
        for name, code, *rest in response.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                message = rest[0] if rest and isinstance(rest[0], str) else f"error code {code}"
                reports[name] = TopicReport(name, "missing", detail=f"could not be created: {message}")
        created = [name for name in missing if name not in reports]
    else:
        created = []
        for name in missing:
            reports[name] = TopicReport(name, "missing", detail="create it with `intake topics` or set kafka.create_topics")
    present = [name for name in names if name not in reports]
    if present:
        described = await _described(admin, present, settle=bool(created))
        insync = await _min_insync(admin, present)
        for name in present:
            reports[name] = _compare(kafka, name, described.get(name), insync.get(name), created=name in created)
    return [reports[name] for name in names]


async def _described(admin: AIOKafkaAdminClient, names: list[str], *, settle: bool) -> dict[str, dict[str, Any]]:
    """Each topic's metadata; just after creating topics, until the brokers list their partitions (it takes a moment)."""
    for _ in range(50 if settle else 1):
        described = {topic["topic"]: topic for topic in await admin.describe_topics(names)}
        if all(described.get(name, {}).get("partitions") for name in names):
            break
        await asyncio.sleep(0.1)
    return described


async def _min_insync(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, str]:
    resources = [ConfigResource(ConfigResourceType.TOPIC, name, configs={"min.insync.replicas": None}) for name in names]
    found: dict[str, str] = {}
    for response in await admin.describe_configs(resources):
        for _code, _message, _type, name, entries in response.resources:
            for entry in entries:
                if entry[0] == "min.insync.replicas":
                    found[name] = entry[1]
    return found


def _compare(kafka: KafkaConfig, name: str, topic: dict[str, Any] | None, insync: str | None, *, created: bool) -> TopicReport:
    partitions = topic["partitions"] if topic else []
    count = len(partitions)
    replication = len(partitions[0]["replicas"]) if partitions else None
    differences = []
    if count and count != kafka.partitions:
        # Not fatal: order per key holds on any count, but changing it later moves keys between partitions.
        differences.append(f"{count} partitions, configured {kafka.partitions}")
    if kafka.replication_factor != -1 and replication is not None and replication != kafka.replication_factor:
        differences.append(f"replication factor {replication}, configured {kafka.replication_factor}")
    if kafka.min_insync_replicas is not None and insync is not None and insync != str(kafka.min_insync_replicas):
        differences.append(f"min.insync.replicas {insync}, configured {kafka.min_insync_replicas}")
    state = "different" if differences else "created" if created else "ok"
    return TopicReport(
        name, state, partitions=count or None, replication_factor=replication, min_insync_replicas=insync, detail="; ".join(differences) or None
    )
