"""What deploy/ hands to operators: the image and its lock, the compose file, the Helm chart, the alert rules, the dashboard.

helm, kubeconform, promtool and the Kubernetes schemas are installed into .local/ by scripts/deploy-tools
(part of scripts/bootstrap test); a test whose tool could not be installed is skipped and names it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "intake"
TOOLS = REPO / ".local" / "bin"
SCHEMAS = REPO / ".local" / "kubernetes-json-schema"
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")  # what scripts/deploy-tools fetches: the chart's kubeVersion floor, the newest


def tool(name: str) -> str:
    path = TOOLS / name
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed: scripts/deploy-tools could not install it here (its output says why)")
    return found


def run(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120, cwd=cwd)


def intake_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The gateway's CLI with exactly these INTAKE_* variables, none inherited from the test run."""
    clean = {name: value for name, value in os.environ.items() if not name.upper().startswith("INTAKE_")}
    return subprocess.run(
        [sys.executable, "-m", "intake.cli", *args], capture_output=True, text=True, timeout=60, cwd=REPO, env={**clean, **env}
    )


# --- YAML ----------------------------------------------------------------------------------------------
# The test environment has no YAML library; helm's own (the one Kubernetes uses) turns a YAML stream into JSON.

_YAML_TO_JSON = """\
{{- $documents := list -}}
{{- range regexSplit "(?m)^---[ \\t]*$" .Values.stream -1 -}}
{{- $document := fromYaml . -}}
{{- if hasKey $document "Error" }}{{ fail $document.Error }}{{ end -}}
{{- if $document }}{{ $documents = append $documents $document }}{{ end -}}
{{- end -}}
{{ toJson (dict "documents" $documents) }}
"""


@pytest.fixture(scope="session")
def yaml_documents(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[dict]]:
    helm = tool("helm")
    converter = tmp_path_factory.mktemp("yaml-to-json")
    (converter / "Chart.yaml").write_text("apiVersion: v2\nname: yaml-to-json\nversion: 0.0.0\n")
    (converter / "templates").mkdir()
    (converter / "templates" / "documents.yaml").write_text(_YAML_TO_JSON)
    stream = converter / "stream.yaml"

    def parse(text: str) -> list[dict]:
        stream.write_text(text)
        result = run(helm, "template", "yaml", str(converter), "--set-file", f"stream={stream}")
        assert result.returncode == 0, result.stderr
        return json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))["documents"]

    return parse


# --- the image and its lock ----------------------------------------------------------------------------


def lock_pins() -> dict[str, tuple[Requirement, list[str]]]:
    """deploy/requirements.lock: each package to its pin and its hashes."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "requirements.lock").read_text())
    pins = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        requirement, *hashes = line.split(" --hash=")
        pin = Requirement(requirement.strip())
        pins[canonicalize_name(pin.name)] = (pin, [value.strip() for value in hashes])
    return pins


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """deploy/Dockerfile as (instruction, arguments) per stage."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), " ".join(arguments.split())))
    return stages


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", " ".join(arguments for instruction, arguments in stage if instruction == "ENV")))


def test_the_lock_pins_every_dependency_of_pyproject_with_hashes():
    pins = lock_pins()
    dependencies = [Requirement(line) for line in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    for dependency in dependencies:
        name = canonicalize_name(dependency.name)
        assert name in pins, f"{dependency.name} is in pyproject.toml but not in deploy/requirements.lock: run pip-compile again"
        pin, _ = pins[name]
        (version,) = [spec.version for spec in pin.specifier if spec.operator == "=="]
        assert dependency.specifier.contains(version, prereleases=True), f"the lock's {name}=={version} is outside {dependency}"
        assert str(pin.marker or "") == str(dependency.marker or ""), f"{name}: the lock lost or changed its marker"
    for name, (pin, hashes) in pins.items():
        assert [spec.operator for spec in pin.specifier] == ["=="], f"{name} is not pinned to one version"
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", value) for value in hashes), f"{name} has no sha256 hashes"


def test_the_image_installs_the_lock_by_hash_and_the_project_without_dependencies():
    build, final = dockerfile_stages()
    assert any(instruction == "RUN" and "pip wheel" in arguments and "--no-deps" in arguments for instruction, arguments in build)
    (lock_copy,) = [arguments.split() for instruction, arguments in final if instruction == "COPY" and "requirements.lock" in arguments]
    assert lock_copy[0] == "deploy/requirements.lock"
    runs = [arguments for instruction, arguments in final if instruction == "RUN"]
    assert any(re.search(rf"pip install --require-hashes -r {re.escape(lock_copy[1])}(\s|$)", command) for command in runs)
    project = next(command for command in runs if "/wheels/" in command)
    assert "--no-deps" in project and "pip check" in project  # what the lock lacks fails the build, not the first start


def test_the_image_runs_as_a_numeric_user_on_defaults_and_environment_only():
    _, final = dockerfile_stages()
    users = [arguments for instruction, arguments in final if instruction == "USER"]
    assert users and users[-1] == "10001:10001"  # numeric: runAsNonRoot can check it
    assert not any("intake.example.toml" in arguments for instruction, arguments in final if instruction == "COPY")
    env = dockerfile_env(final)
    assert "INTAKE_CONFIG" not in env  # a configuration is mounted and named by whoever runs the image
    volumes = [arguments for instruction, arguments in final if instruction == "VOLUME"]
    assert volumes == [str(Path(env["INTAKE_SPOOL__PATH"]).parent)]
    # What the image sets is a valid configuration, and the gateway starts on it without a file.
    result = intake_cli("check-config", env={name: value for name, value in env.items() if name.startswith("INTAKE_")})
    assert result.returncode == 0, result.stderr


def test_compose_runs_the_kafka_of_the_pom_and_keeps_its_data_on_the_volume(yaml_documents):
    (compose,) = yaml_documents((DEPLOY / "compose.yaml").read_text())
    pom = ElementTree.parse(DEPLOY / "kafka" / "pom.xml").getroot()
    kafka_version = pom.find("{http://maven.apache.org/POM/4.0.0}properties/{http://maven.apache.org/POM/4.0.0}kafka.version").text
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{kafka_version}"
    mounted = {volume.split(":")[1] for volume in kafka["volumes"]}
    assert kafka["environment"]["KAFKA_LOG_DIRS"] in mounted  # the image's default is /tmp/kraft-combined-logs, off the volume
    _, final = dockerfile_stages()
    spool = Path(dockerfile_env(final)["INTAKE_SPOOL__PATH"]).parent
    assert str(spool) in {volume.split(":")[1] for volume in compose["services"]["intake"]["volumes"]}
