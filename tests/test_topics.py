"""The topics intake writes to: created with the operator's settings, checked, and a missing one named in /readyz."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp

from intake import topics

from tests.support.gateway import running, settings
from tests.support.topic import wait_for


def intake_topics(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "intake.cli", "--config", str(config), "topics", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "INTAKE_CONFIG": ""},
    )


def test_intake_topics_creates_with_the_configured_settings_then_checks(tmp_path: Path, kafka, topic):
    config = tmp_path / "intake.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "{kafka.bootstrap}"\ntopic = "{topic}"\ndead_letter_topic = "{topic}.dead-letter"\n'
        f'outbound_topic = "{topic}.outbound"\npartitions = 4\nmin_insync_replicas = 1\n'
    )
    checked = intake_topics(config, "--check")
    created = intake_topics(config)
    again = intake_topics(config, "--check")
    config.write_text(config.read_text().replace("partitions = 4", "partitions = 6"))
    different = intake_topics(config, "--check")
    assert checked.returncode == 1, checked.stderr
    assert [t["state"] for t in json.loads(checked.stdout)] == ["missing", "missing", "missing"]
    assert created.returncode == 0, created.stderr
    assert [(t["name"], t["state"], t["partitions"], t["min_insync_replicas"]) for t in json.loads(created.stdout)] == [
        (topic, "created", 4, "1"),
        (f"{topic}.dead-letter", "created", 4, "1"),
        (f"{topic}.outbound", "created", 4, "1"),
    ]
    assert again.returncode == 0 and {t["state"] for t in json.loads(again.stdout)} == {"ok"}
    assert different.returncode == 1
    assert json.loads(different.stdout)[0]["detail"] == "4 partitions, configured 6"


def test_intake_topics_says_when_kafka_cannot_be_reached(tmp_path: Path):
    from tests.support.gateway import free_port

    config = tmp_path / "intake.toml"
    config.write_text(f'[kafka]\nbootstrap_servers = "127.0.0.1:{free_port()}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "intake.cli", "--config", str(config), "topics"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "cannot reach Kafka" in result.stderr


async def test_a_missing_topic_is_named_in_readyz_until_it_exists(tmp_path: Path, kafka, topic):
    config = settings(tmp_path, kafka.bootstrap, topic, kafka={"create_topics": False})
    async with running(config) as (_, base), aiohttp.ClientSession() as http:

        async def readyz() -> dict:
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 200  # still taking complaints in: the spool keeps them
                return await response.json()

        async def missing() -> bool:
            return (await readyz())["components"]["publisher"].startswith(f"degraded: topics missing: {topic}, {topic}.dead-letter")

        await wait_for(missing, timeout=15)
        assert (await readyz())["kafka"]["topics"] == {topic: "missing", f"{topic}.dead-letter": "missing", f"{topic}.outbound": "missing"}
        # What `intake topics` does, as the operator runs it beside the gateway.
        await topics.ensure(config.kafka, create=True)

        async def resolved() -> bool:
            return (await readyz())["components"]["publisher"] == "ok"

        await wait_for(resolved, timeout=30)
