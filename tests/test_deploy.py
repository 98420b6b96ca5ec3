"""What deploy/ hands to operators: the image and its lock, the compose file, the Helm chart, the alert rules, the dashboard.

helm, kubeconform, promtool and the Kubernetes schemas are installed into .local/ by scripts/deploy-tools
(part of scripts/bootstrap test); a test whose tool could not be installed is skipped and names it.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
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


# --- the Helm chart --------------------------------------------------------------------------------------

EVERYTHING_ON = (
    "--set", "replicaCount=3",
    "--set", "smtp.enabled=true",
    "--set", "secrets.existingSecret=intake-secrets",
    "--set", "attachments.existingClaim=intake-attachments",
    "--set", "persistence.storageClassName=fast",
    "--set", "serviceMonitor.enabled=true",
)  # fmt: skip
VALUE_SETS = {"defaults": (), "everything on": EVERYTHING_ON}


def helm_template(*arguments: str, kube_version: str = KUBERNETES_VERSIONS[-1]) -> subprocess.CompletedProcess[str]:
    return run(tool("helm"), "template", "intake", str(CHART), "--kube-version", kube_version, *arguments)


@pytest.fixture(scope="session")
def render(yaml_documents: Callable[[str], list[dict]]) -> Callable[..., list[dict]]:
    def render(*arguments: str) -> list[dict]:
        result = helm_template(*arguments)
        assert result.returncode == 0, result.stderr
        return yaml_documents(result.stdout)

    return render


def values_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(text)
    return str(path)


def only(documents: list[dict], kind: str) -> dict:
    (found,) = [document for document in documents if document["kind"] == kind]
    return found


def pod(documents: list[dict]) -> dict:
    return only(documents, "StatefulSet")["spec"]["template"]["spec"]


def gateway(documents: list[dict]) -> dict:
    (container,) = pod(documents)["containers"]
    return container


def env(container: dict) -> dict[str, str]:
    return {variable["name"]: variable["value"] for variable in container["env"]}


def mounts(container: dict) -> dict[str, dict]:
    return {mount["name"]: mount for mount in container["volumeMounts"]}


def config_of(documents: list[dict]) -> dict:
    return tomllib.loads(only(documents, "ConfigMap")["data"]["intake.toml"])


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_chart_lints(values: tuple[str, ...]):
    result = run(tool("helm"), "lint", "--strict", str(CHART), "--kube-version", KUBERNETES_VERSIONS[-1], *values)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_chart_renders_objects_valid_for_kubernetes(values: tuple[str, ...], kube_version: str, yaml_documents):
    manifests = helm_template(*values, kube_version=kube_version)
    assert manifests.returncode == 0, manifests.stderr
    documents = yaml_documents(manifests.stdout)
    result = kubeconform(manifests.stdout, kube_version)
    assert result.returncode == 0, result.stdout + result.stderr
    checked = [document for document in documents if document["kind"] != "ServiceMonitor"]
    assert f"Valid: {len(checked)}, Invalid: 0, Errors: 0" in result.stdout, result.stdout


def kubeconform(manifests: str, kube_version: str) -> subprocess.CompletedProcess[str]:
    location = str(SCHEMAS / "{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}" / "{{ .ResourceKind }}{{ .KindSuffix }}.json")
    if not (SCHEMAS / f"v{kube_version}-local-strict").is_dir():
        pytest.skip(f"no Kubernetes {kube_version} schemas in {SCHEMAS}: scripts/deploy-tools fetches them")
    return run(
        tool("kubeconform"), "-strict", "-summary", "-kubernetes-version", kube_version, "-schema-location", location,
        # A CRD of prometheus-operator, whose schema Kubernetes does not ship; test_the_service_monitor_... checks it.
        "-skip", "monitoring.coreos.com/v1/ServiceMonitor", "-", stdin=manifests,
    )  # fmt: skip


def test_kubeconform_refuses_a_field_kubernetes_does_not_know():
    manifests = helm_template().stdout
    assert "readOnlyRootFilesystem: true" in manifests
    result = kubeconform(manifests.replace("readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true"), KUBERNETES_VERSIONS[-1])
    assert result.returncode != 0 and "readOnlyRootFileSystem" in result.stdout


def test_each_replica_has_its_own_spool_claim(render):
    documents = render()
    kinds = {document["kind"] for document in documents}
    assert "StatefulSet" in kinds and "Deployment" not in kinds
    statefulset = only(documents, "StatefulSet")["spec"]
    (claim,) = statefulset["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "spool" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    spool = Path(env(gateway(documents))["INTAKE_SPOOL__PATH"])
    assert mounts(gateway(documents))["spool"]["mountPath"] == str(spool.parent)
    # A removed replica's claim may still hold complaints.
    assert statefulset["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    headless = next(document for document in documents if document["kind"] == "Service" and document["metadata"]["name"] == statefulset["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"


def test_the_pod_runs_as_user_10001_with_nothing_writable_but_its_volumes(render):
    documents = render(*EVERYTHING_ON)
    assert pod(documents)["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    container = gateway(documents)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
    }  # fmt: skip
    writable = {name for name, mount in mounts(container).items() if not mount.get("readOnly")}
    assert writable == {"spool", "tmp", "attachments"}
    assert env(container)["INTAKE_ATTACHMENTS__DIRECTORY"] == mounts(container)["attachments"]["mountPath"]
    _, final = dockerfile_stages()
    assert [arguments for instruction, arguments in final if instruction == "USER"][-1] == "10001:10001"  # the image agrees


def test_liveness_is_healthz_and_readiness_is_readyz_on_the_gateway_port(render):
    container = gateway(render())
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": int(env(container)["INTAKE_HTTP__PORT"])} == {"http": 8080}
    for probe, path in (("livenessProbe", "/healthz"), ("startupProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}
    assert set(container["resources"]) == {"requests", "limits"}
    assert all(set(container["resources"][kind]) == {"cpu", "memory"} for kind in ("requests", "limits"))


def test_the_grace_period_outlasts_the_drain_and_the_flush(render, tmp_path: Path):
    documents = render()
    config = config_of(documents)
    assert pod(documents)["terminationGracePeriodSeconds"] > config["drain_seconds"] + config["shutdown_grace_seconds"]
    refused = helm_template("--set", "terminationGracePeriodSeconds=17")  # = 2 + 15
    assert refused.returncode != 0 and "terminationGracePeriodSeconds" in refused.stderr
    longer_flush = values_file(tmp_path, "config: |\n  shutdown_grace_seconds = 40\n")
    assert helm_template("-f", longer_flush).returncode != 0
    assert helm_template("-f", longer_flush, "--set", "terminationGracePeriodSeconds=45").returncode == 0


def test_the_gateway_accepts_the_configuration_the_chart_gives_it(render, tmp_path: Path):
    documents = render(*EVERYTHING_ON)
    container = gateway(documents)
    variables = env(container)
    config_mount = next(mount for mount in container["volumeMounts"] if mount["name"] == "config")
    assert variables["INTAKE_CONFIG"] == f"{config_mount['mountPath']}/intake.toml"
    assert variables["INTAKE_SECRETS_DIR"] == mounts(container)["secrets"]["mountPath"] == "/run/secrets/intake"
    secret = next(volume for volume in pod(documents)["volumes"] if volume["name"] == "secrets")["secret"]
    assert secret["secretName"] == "intake-secrets"
    # The pod's files, here: the ConfigMap's TOML, and a Secret key named like the variable it sets.
    (tmp_path / "intake.toml").write_text(only(documents, "ConfigMap")["data"]["intake.toml"])
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "INTAKE_WEBHOOK__PARTNERS").write_text('{"acme": {"secrets": ["acme-secret-0123456789abcdef"]}}\n')
    result = intake_cli("check-config", env={**variables, "INTAKE_CONFIG": str(tmp_path / "intake.toml"), "INTAKE_SECRETS_DIR": str(secrets)})
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.partition("\n")[2])
    assert summary["http"] == "0.0.0.0:8080"
    assert summary["spool"] == variables["INTAKE_SPOOL__PATH"]
    assert summary["kafka"] == config_of(documents)["kafka"]["bootstrap_servers"]
    assert summary["channels"]["email_smtp"] == "0.0.0.0:2525"
    assert summary["webhook_partners"] == ["acme"]


def test_service_links_are_off_as_the_gateway_would_take_them_for_options(render):
    # What Kubernetes adds to a pod for a Service named intake: an unknown section, which stops the gateway.
    result = intake_cli("check-config", env={"INTAKE_PORT": "tcp://10.0.0.1:8080"})
    assert result.returncode == 2 and "INTAKE_PORT" in result.stderr
    assert pod(render())["enableServiceLinks"] is False


def test_no_secret_is_mounted_unless_one_is_named(render):
    documents = render()
    assert "INTAKE_SECRETS_DIR" not in env(gateway(documents))
    assert "secrets" not in mounts(gateway(documents))


def test_the_smtp_port_is_served_only_when_the_listener_is_on(render):
    def ports(documents: list[dict]) -> dict[str, int]:
        service = next(document for document in documents if document["kind"] == "Service" and not document["spec"].get("clusterIP"))
        return {port["name"]: port["port"] for port in service["spec"]["ports"]}

    assert ports(render()) == {"http": 8080}
    documents = render("--set", "smtp.enabled=true")
    assert ports(documents) == {"http": 8080, "smtp": 2525}
    container = gateway(documents)
    assert {port["name"]: port["containerPort"] for port in container["ports"]}["smtp"] == int(env(container)["INTAKE_EMAIL__SMTP__PORT"])
    assert env(container)["INTAKE_EMAIL__SMTP__ENABLED"] == "true"


@pytest.mark.parametrize(
    "pull_channel",
    [
        '[[email.imap]]\n  name = "support"\n  host = "imap.example.org"\n  username = "support@example.org"\n',
        '[telegram]\n  enabled = true\n  mode = "polling"\n',
        '[telegram]\n  enabled = true\n',  # polling is the default mode
    ],
    ids=["imap", "telegram polling", "telegram default"],
)
def test_a_pull_channel_is_refused_on_more_than_one_replica(pull_channel: str, tmp_path: Path):
    values = values_file(tmp_path, "config: |\n  " + pull_channel)
    refused = helm_template("-f", values)
    assert refused.returncode != 0 and "one owner" in refused.stderr
    assert helm_template("-f", values, "--set", "replicaCount=1").returncode == 0, "a release of its own with one replica"


def test_telegram_webhooks_scale_with_the_replicas(tmp_path: Path):
    values = values_file(tmp_path, 'config: |\n  [telegram]\n  enabled = true\n  mode = "webhook"\n')
    assert helm_template("-f", values, "--set", "replicaCount=3").returncode == 0


def test_disruptions_take_one_replica_at_a_time(render):
    documents = render()
    budget = only(documents, "PodDisruptionBudget")["spec"]
    assert budget["maxUnavailable"] == 1
    labels = only(documents, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()


def test_the_service_monitor_is_off_by_default_and_scrapes_every_replica(render):
    assert "ServiceMonitor" not in {document["kind"] for document in render()}
    documents = render("--set", "serviceMonitor.enabled=true")
    monitor = only(documents, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    wanted = monitor["spec"]["selector"]["matchLabels"]
    (service,) = [
        document for document in documents if document["kind"] == "Service" and wanted.items() <= document["metadata"]["labels"].items()
    ]
    # Not-ready replicas are scraped too, or intake_ready == 0 would never be seen.
    assert service["spec"]["publishNotReadyAddresses"] is True
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}


# --- what the alert rules and the dashboard query --------------------------------------------------------

TARGET_LABELS = {"instance", "job"}  # added by Prometheus to what it scrapes


def exported_series() -> dict[str, set[str]]:
    """Every series name the gateway can expose, the channels' own included, to its labels."""
    from intake.channels.twilio import TwilioChannel, TwilioConfig
    from intake.metrics import Metrics

    metrics = Metrics()
    # Registers its counters, and its dead letters' replay with a reception that keeps nothing.
    TwilioChannel(TwilioConfig(), SimpleNamespace(replayable=lambda channel, replayer: None), None, metrics)  # type: ignore[arg-type]
    # prometheus_client keeps the sample names (_total, _bucket, ...) of each collector here.
    return {
        name: set(collector._labelnames) | ({"le"} if name.endswith("_bucket") else set())
        for name, collector in metrics.registry._names_to_collectors.items()
    }


def assert_names_what_the_gateway_exports(expression: str, exported: dict[str, set[str]], source: str) -> set[str]:
    names = set(re.findall(r"\b(intake_\w+)", expression))
    assert names, f"no intake metric in {expression!r}"
    for name in names:
        assert name in exported, f"{name} is not a metric the gateway exports ({expression!r})"
    labels = set().union(*(exported[name] for name in names)) | TARGET_LABELS
    for name, selector in re.findall(r"\b(intake_\w+)\{([^}]*)\}", expression):
        for label, _, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', selector):
            assert label in exported[name] | TARGET_LABELS, f"{name} has no label {label}"
            if label not in TARGET_LABELS | {"le"}:  # a bucket's bound is the histogram's, not a string in the code
                assert f'"{value}"' in source, f'no {label}="{value}" anywhere in the code'
    for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expression):
        for label in filter(None, (part.strip() for part in grouping.split(","))):
            assert label in labels, f"{expression!r} groups by {label}, which its metrics do not have"
    return names


@pytest.fixture(scope="module")
def code() -> tuple[dict[str, set[str]], str]:
    source = "\n".join(path.read_text() for path in sorted((REPO / "intake").rglob("*.py")))
    return exported_series(), source


ALERTS = DEPLOY / "prometheus" / "intake-alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "intake-alerts.test.yaml"


@pytest.fixture(scope="module")
def alert_rules(yaml_documents) -> list[dict]:
    (rules,) = yaml_documents(ALERTS.read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_the_alert_rules_pass_promtool():
    result = run(tool("promtool"), "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_fires_on_its_series_and_stays_quiet_before_and_beside_them(alert_rules, yaml_documents):
    result = run(tool("promtool"), "test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    (tests,) = yaml_documents(ALERT_TESTS.read_text())
    cases = [case for test in tests["tests"] for case in test["alert_rule_test"]]
    for rule in alert_rules:
        expected = [case["exp_alerts"] for case in cases if case["alertname"] == rule["alert"]]
        assert any(expected), f"no test makes {rule['alert']} fire"
        assert not all(expected), f"no test shows {rule['alert']} quiet"


def test_the_alerts_are_on_metrics_the_gateway_exports(alert_rules, code):
    exported, source = code
    for rule in alert_rules:
        names = assert_names_what_the_gateway_exports(rule["expr"], exported, source)
        labels = set().union(*(exported[name] for name in names)) | TARGET_LABELS
        for text in rule["annotations"].values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                assert label in labels, f"{rule['alert']} quotes $labels.{label}, which {names} do not have"


def test_the_alerts_the_operators_asked_for_are_there(alert_rules):
    rules = {rule["alert"]: rule for rule in alert_rules}
    asked = {
        "IntakeComponentDown": ("intake_component_up == 0", "2m"),
        "IntakeComponentDegraded": ("intake_component_degraded == 1", "10m"),
        "IntakeNotReady": ("intake_ready == 0", None),
        "IntakeSpoolNotWritable": ("intake_spool_writable == 0", None),
        "IntakePublishLag": ("intake_publish_lag_seconds > 300", None),
        "IntakeSpoolFilling": ("intake_spool_pending_bytes", None),
        "IntakeDeadLetters": ('increase(intake_received_total{outcome="dead_lettered"}[1h]) > 0', None),
        "IntakeAcknowledgementFailures": ('increase(intake_acknowledgements_total{outcome="failed"}[1h]) > 0', None),
        "IntakeKafkaDown": ("intake_kafka_up == 0", "5m"),
        "IntakeRepliesFailing": ('increase(intake_outbound_deliveries_total{outcome="failed"}[1h]) > 0', None),
    }
    assert set(rules) == set(asked)
    for name, (expression, duration) in asked.items():
        assert expression in rules[name]["expr"], name
        if duration:
            assert rules[name]["for"] == duration, name
    assert "intake_spool_pending_events" in rules["IntakeSpoolFilling"]["expr"]


DASHBOARD = DEPLOY / "grafana" / "intake-dashboard.json"


def dashboard_panels() -> list[dict]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def test_the_dashboard_queries_a_prometheus_chosen_on_import():
    dashboard = json.loads(DASHBOARD.read_text())
    assert [item["name"] for item in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    datasource = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    panels = dashboard_panels()
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == datasource, panel["title"]
        assert panel["targets"] and all(target["datasource"] == datasource for target in panel["targets"]), panel["title"]


def test_every_dashboard_query_parses_and_is_on_metrics_the_gateway_exports(code, tmp_path: Path):
    exported, source = code
    expressions = [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]
    # Grafana's variables as Grafana would fill them in, then PromQL's own parser, through promtool.
    filled = [expression.replace("$__rate_interval", "5m").replace("$instance", ".*") for expression in expressions]
    assert not any("$" in expression for expression in filled), "a dashboard variable this test does not fill in"
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{n}", "expr": e} for n, e in enumerate(filled)]}]}
    (tmp_path / "dashboard-queries.yaml").write_text(json.dumps(rules))  # JSON is YAML
    result = run(tool("promtool"), "check", "rules", str(tmp_path / "dashboard-queries.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    for expression in filled:
        assert_names_what_the_gateway_exports(expression, exported, source)


def test_the_dashboard_shows_what_operators_asked_for():
    queried = " ".join(target["expr"] for panel in dashboard_panels() for target in panel["targets"])
    for metric in (
        "intake_received_total", "intake_acknowledgement_latency_seconds_bucket", "intake_published_total",
        "intake_publish_failures_total", "intake_publish_lag_seconds", "intake_spool_pending_events",
        "intake_spool_pending_bytes", "intake_component_up", "intake_component_degraded",
        "intake_component_restarts_total", "intake_ready", "intake_outbound_deliveries_total",
        "intake_csat_score_bucket", "intake_nps_score_bucket", "intake_surveys_answered_total",
    ):  # fmt: skip
        assert re.search(rf"\b{metric}\b", queried), f"no panel shows {metric}"
    assert "histogram_quantile(0.5," in queried and "histogram_quantile(0.95," in queried
    assert re.search(r"sum by \(channel, outcome\) \(rate\(intake_received_total", queried)
