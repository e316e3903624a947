"""The deployment recipes under deploy/ agree with the code: settings, commands, ports, partitions,
metrics and the runbook. Nothing here needs a cluster; promtool and kubectl are used when installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client.metrics import MetricWrapperBase
from pydantic_settings import BaseSettings

from cli.main import build_parser
from common.kafka import KafkaConnectionSettings
from consumer.app import ConsumerApp
from consumer.app import create_app as create_consumer_app
from consumer.settings import ConsumerSettings
from handlers import RulesSettings
from ingress.app import create_app as create_ingress_app
from ingress.bootstrap import graceful_shutdown_seconds
from ingress.producer import NoopProducer
from ingress.settings import IngressSettings
from tests.support.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"
DASHBOARD = DEPLOY / "grafana" / "exam-events.json"
OPERATIONS = ROOT / "docs" / "operations.md"
ENTRY_POINTS = ["base", "keda", "topics", "config"]

METRIC = re.compile(r"\bexam_events_[a-z0-9_]+")
# Labels Prometheus adds when it scrapes, on every series.
SCRAPE_LABELS = {"instance", "job"}
MIN_CONSUMER_GRACE_MARGIN_SECONDS = 10
MIN_INGRESS_GRACE_MARGIN_SECONDS = 5
Doc = dict[str, Any]


# --- reading deploy/ -------------------------------------------------------------------------------


def yaml_documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest_files() -> list[Path]:
    """Every Kubernetes object file (kustomizations and the example Secret apart)."""
    return sorted(
        path
        for path in K8S.rglob("*.yaml")
        if path.name != "kustomization.yaml" and path.name != "secret.example.yaml"
    )


def manifests() -> list[Doc]:
    return [doc for path in manifest_files() for doc in yaml_documents(path)]


def the(kind: str, name: str) -> Doc:
    found = [m for m in manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def example_secret() -> Doc:
    (secret,) = yaml_documents(K8S / "secret.example.yaml")
    return secret


def pod_specs() -> dict[str, Doc]:
    """Workload name -> its pod spec (Deployments and Jobs)."""
    return {
        m["metadata"]["name"]: m["spec"]["template"]["spec"]
        for m in manifests()
        if m["kind"] in {"Deployment", "Job"}
    }


def containers() -> Iterator[tuple[str, Doc]]:
    for workload, spec in pod_specs().items():
        for container in spec["containers"]:
            yield f"{workload}/{container['name']}", container


def container(workload: str) -> Doc:
    (only,) = pod_specs()[workload]["containers"]
    return dict(only)


def environment(container: Doc) -> dict[str, str | None]:
    """The variables a container receives: name -> value (None for an absent optional secret key)."""
    config_maps = {m["metadata"]["name"]: m.get("data", {}) for m in manifests() if m["kind"] == "ConfigMap"}
    secret = example_secret()
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]])
        if "secretRef" in source:
            assert source["secretRef"]["name"] == secret["metadata"]["name"]
            env.update(secret["stringData"])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = str(variable["value"])
            continue
        source = variable["valueFrom"]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[variable["name"]] = config_maps[ref["name"]][ref["key"]]
        else:
            ref = source["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            env[variable["name"]] = secret["stringData"].get(ref["key"])
    return env


def port_number(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def settings_names(cls: type[BaseSettings]) -> set[str]:
    """The environment variables a settings class reads (nested settings classes read their own)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names = set()
    for name, field in cls.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
            continue
        names.add(f"{prefix}{name}".upper())
    return names


INGRESS_NAMES = settings_names(IngressSettings) | settings_names(KafkaConnectionSettings)
CONSUMER_NAMES = (
    settings_names(ConsumerSettings) | settings_names(KafkaConnectionSettings) | settings_names(RulesSettings)
)
SETTING_PREFIXES = ("INGRESS_", "CONSUMER_", "KAFKA_")


def process_of(container: Doc) -> str:
    """`ingress`, or `consumer` for the consumer and the operating commands (they read its settings)."""
    return "ingress" if container["command"][1:2] == ["ingress"] else "consumer"


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting of this machine's environment leaks into settings built from a manifest."""
    for name in list(os.environ):
        if name.startswith(SETTING_PREFIXES) or name in CONSUMER_NAMES | INGRESS_NAMES:
            monkeypatch.delenv(name)
    return monkeypatch


def settings_from(monkeypatch: pytest.MonkeyPatch, container: Doc) -> IngressSettings | ConsumerSettings:
    for name, value in environment(container).items():
        if value is not None:
            monkeypatch.setenv(name, value)
    return IngressSettings() if process_of(container) == "ingress" else ConsumerSettings()


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


# --- manifests -------------------------------------------------------------------------------------


def test_every_yaml_file_under_deploy_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml"))

    assert len(files) >= 10
    for path in files:
        assert yaml_documents(path), f"{path} holds nothing"


def test_every_kubernetes_object_has_an_api_version_a_kind_and_a_name() -> None:
    objects = [*manifests(), example_secret()]

    assert {m["kind"] for m in objects} >= {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "Job",
        "ScaledObject",
    }
    for m in objects:
        assert m["apiVersion"], m
        assert m["kind"], m
        assert m["metadata"]["name"], m


def test_every_kustomization_names_files_and_directories_that_exist() -> None:
    kustomizations = sorted(K8S.rglob("kustomization.yaml"))

    assert {k.parent.name for k in kustomizations} >= {*ENTRY_POINTS, "image"}
    for path in kustomizations:
        (kustomization,) = yaml_documents(path)
        for entry in kustomization.get("resources", []) + kustomization.get("components", []):
            assert (path.parent / entry).exists(), f"{path}: {entry}"
    listed = {
        (path.parent / entry).resolve()
        for path in kustomizations
        for entry in yaml_documents(path)[0].get("resources", [])
    }
    assert set(manifest_files()) <= listed, "a manifest no kustomization applies"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_kubectl_kustomize_builds_every_entry_point_into_the_namespace_with_one_image(
    entry_point: str,
) -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S / entry_point)], capture_output=True, text=True, timeout=60
    )

    assert built.returncode == 0, built.stderr
    objects = [doc for doc in yaml.safe_load_all(built.stdout) if doc is not None]
    for m in objects:
        if m["kind"] != "Namespace":
            assert m["metadata"]["namespace"] == "exam-events", m["metadata"]
    images = {
        c["image"]
        for m in objects
        if "template" in m.get("spec", {})
        for c in m["spec"]["template"]["spec"]["containers"]
    }
    (image,) = yaml_documents(K8S / "image" / "kustomization.yaml")[0]["images"]
    assert images <= {f"{image['newName']}:{image['newTag']}"}


def test_deployments_select_their_own_pods_and_services_and_budgets_select_exactly_one_workload() -> None:
    workloads = {m["metadata"]["name"]: m for m in manifests() if m["kind"] == "Deployment"}
    assert set(workloads) == {"exam-events-ingress", "exam-events-consumer"}

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return selector.items() <= labels.items()

    for deployment in workloads.values():
        assert selects(
            deployment["spec"]["selector"]["matchLabels"],
            deployment["spec"]["template"]["metadata"]["labels"],
        )
    for m in manifests():
        if m["kind"] == "Service":
            selector = m["spec"]["selector"]
        elif m["kind"] == "PodDisruptionBudget":
            selector = m["spec"]["selector"]["matchLabels"]
        else:
            continue
        chosen = [
            n for n, d in workloads.items() if selects(selector, d["spec"]["template"]["metadata"]["labels"])
        ]
        # Both Services are the ingress's; each budget covers the Deployment of its own name.
        expected = "exam-events-ingress" if m["kind"] == "Service" else m["metadata"]["name"]
        assert chosen == [expected], f"{m['kind']}/{m['metadata']['name']} selects {chosen}"


def test_both_deployments_have_a_disruption_budget_that_lets_unready_pods_go() -> None:
    for name in ("exam-events-ingress", "exam-events-consumer"):
        budget = the("PodDisruptionBudget", name)["spec"]

        assert budget["maxUnavailable"] == 1
        assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_the_ingress_probes_and_scrape_annotations_use_the_admin_port_its_settings_name(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    ingress = container("exam-events-ingress")
    settings = settings_from(clean_environment, ingress)
    assert isinstance(settings, IngressSettings)
    annotations = the("Deployment", "exam-events-ingress")["spec"]["template"]["metadata"]["annotations"]

    assert port_number(ingress, "admin") == settings.admin_port == 8082
    assert port_number(ingress, "http") == settings.port == 8080
    for probe, path in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ]:
        assert ingress[probe]["httpGet"]["path"] == path
        assert port_number(ingress, ingress[probe]["httpGet"]["port"]) == settings.admin_port
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == settings.admin_port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_ingress_services_send_the_public_port_and_the_admin_port_to_their_container_ports() -> None:
    ingress = container("exam-events-ingress")
    (public,) = the("Service", "exam-events-ingress")["spec"]["ports"]
    (admin,) = the("Service", "exam-events-ingress-admin")["spec"]["ports"]

    assert (public["port"], port_number(ingress, public["targetPort"])) == (8080, 8080)
    assert (admin["port"], port_number(ingress, admin["targetPort"])) == (8082, 8082)
    assert the("Service", "exam-events-ingress")["spec"]["type"] == "ClusterIP"


def test_the_consumer_probes_and_scrape_annotations_use_its_http_port(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    consumer = container("exam-events-consumer")
    settings = settings_from(clean_environment, consumer)
    assert isinstance(settings, ConsumerSettings)
    annotations = the("Deployment", "exam-events-consumer")["spec"]["template"]["metadata"]["annotations"]

    for probe, path in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ]:
        assert consumer[probe]["httpGet"]["path"] == path
        assert port_number(consumer, consumer[probe]["httpGet"]["port"]) == settings.http_port == 8081
    assert int(annotations["prometheus.io/port"]) == settings.http_port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_every_environment_variable_a_container_gets_is_a_setting_of_the_process_it_runs() -> None:
    for name, spec in containers():
        valid = INGRESS_NAMES if process_of(spec) == "ingress" else CONSUMER_NAMES
        unknown = {n for n in environment(spec) if n not in valid and not n.startswith("OTEL_")}

        assert not unknown, f"{name}: not settings of its process: {sorted(unknown)}"


def test_the_setting_names_come_from_the_settings_classes() -> None:
    assert {"INGRESS_ADMIN_PORT", "INGRESS_SIGNING_SECRETS"} <= INGRESS_NAMES
    assert {"CONSUMER_GRACEFUL_TIMEOUT_SECONDS", "KAFKA_SASL_PASSWORD", "MAX_RESITS"} <= CONSUMER_NAMES
    assert "CONSUMER_KAFKA" not in CONSUMER_NAMES
    assert "INGRESS_GRACEFUL_TIMEOUT_SECONDS" not in INGRESS_NAMES


def test_every_container_environment_is_a_valid_configuration_of_its_process(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    for name, spec in containers():
        with clean_environment.context() as env:
            settings = settings_from(env, spec)

        assert (
            settings.kafka.bootstrap_servers
            == the("ConfigMap", "exam-events-kafka")["data"]["KAFKA_BOOTSTRAP_SERVERS"]
        ), name


def test_secrets_come_from_secret_references_to_keys_the_example_secret_documents() -> None:
    example = (K8S / "secret.example.yaml").read_text()
    referenced: set[str] = set()
    for name, spec in containers():
        for variable in spec.get("env", []):
            ref = variable.get("valueFrom", {}).get("secretKeyRef")
            if ref is None:
                assert not re.search("PASSWORD|SECRET", variable["name"]), f"{name}: a literal secret"
                continue
            assert ref["name"] == example_secret()["metadata"]["name"]
            assert re.search(rf"^\s*#?\s*{ref['key']}:", example, re.MULTILINE), ref["key"]
            referenced.add(ref["key"])

    assert {"INGRESS_BASIC_AUTH_PASSWORD", "INGRESS_SIGNING_SECRETS", "KAFKA_SASL_PASSWORD"} <= referenced


def test_every_command_is_an_exam_events_subcommand_the_image_installs() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^exam-events = "cli\.main:main"$', pyproject, re.MULTILINE)
    # The project itself (`.`, or with extras such as `'.[otlp]'`), which installs the console script.
    assert re.search(r"^RUN pip install [^\n]*\s'?\.(\[[a-z,]+\])?'?\s", dockerfile(), re.MULTILINE)
    commands = {name: spec["command"] for name, spec in containers()}

    assert commands["exam-events-ingress/ingress"] == ["exam-events", "ingress"]
    assert commands["exam-events-consumer/consumer"] == ["exam-events", "consumer"]
    for name, command in commands.items():
        assert command[0] == "exam-events", name
        build_parser().parse_args(command[1:])  # exits 2 on an unknown subcommand or option


def test_the_image_copies_every_package_the_project_installs() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    (include,) = re.findall(r"^include = \[([^\]]*)\]", pyproject, re.MULTILINE)
    packages = {name.strip().strip('"').rstrip("*") for name in include.split(",")}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile(), re.MULTILINE))

    assert packages >= {"cli", "lrs_forward", "ingress", "consumer"}
    assert packages <= copied, f"the Dockerfile does not copy {sorted(packages - copied)}"


def test_pods_run_as_the_user_the_image_creates_without_privileges() -> None:
    (uid,) = re.findall(r"useradd [^\n]*--uid (\d+)", dockerfile())
    for workload, spec in pod_specs().items():
        assert spec["securityContext"]["runAsNonRoot"] is True, workload
        assert spec["securityContext"]["runAsUser"] == int(uid), workload
    for name, spec in containers():
        assert spec["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"], name


def test_the_consumer_grace_period_covers_its_graceful_timeout_with_margin(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    settings = settings_from(clean_environment, container("exam-events-consumer"))
    assert isinstance(settings, ConsumerSettings)
    grace = pod_specs()["exam-events-consumer"]["terminationGracePeriodSeconds"]

    assert settings.graceful_timeout_seconds == 30
    assert grace >= settings.graceful_timeout_seconds + MIN_CONSUMER_GRACE_MARGIN_SECONDS


def test_the_ingress_grace_period_covers_pre_stop_requests_in_flight_and_the_flush(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    ingress = container("exam-events-ingress")
    settings = settings_from(clean_environment, ingress)
    assert isinstance(settings, IngressSettings)
    pre_stop = ingress["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = int(pre_stop[1]) + graceful_shutdown_seconds(settings) + settings.produce_timeout_seconds
    grace = pod_specs()["exam-events-ingress"]["terminationGracePeriodSeconds"]

    assert grace >= needed + MIN_INGRESS_GRACE_MARGIN_SECONDS


def test_the_consumer_rollout_removes_a_member_before_it_adds_one() -> None:
    deployment = the("Deployment", "exam-events-consumer")["spec"]

    assert deployment["strategy"]["rollingUpdate"]["maxSurge"] == 0
    assert "replicas" not in deployment, "leave replicas to KEDA / kubectl scale"


# --- KEDA ------------------------------------------------------------------------------------------


def default_partitions_of_create_topics() -> int:
    """The partition count `scripts/create-topics` uses without --partitions and $TOPIC_PARTITIONS."""
    env = {k: v for k, v in os.environ.items() if k != "TOPIC_PARTITIONS"} | {"COLUMNS": "200"}
    shown = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "create-topics"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    ).stdout
    (count,) = re.findall(r"\(default:\s+\$TOPIC_PARTITIONS\s+or\s+(\d+)\)", shown)
    return int(count)


def test_keda_scales_the_consumer_deployment_on_its_group_its_raw_topic_and_its_brokers(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    settings = settings_from(clean_environment, container("exam-events-consumer"))
    assert isinstance(settings, ConsumerSettings)
    scaled = the("ScaledObject", "exam-events-consumer")["spec"]
    (trigger,) = scaled["triggers"]
    kafka = trigger["metadata"]

    assert scaled["scaleTargetRef"]["name"] == "exam-events-consumer"
    assert the("Deployment", scaled["scaleTargetRef"]["name"])
    assert trigger["type"] == "kafka"
    assert kafka["consumerGroup"] == settings.group_id == "exam-events"
    assert kafka["topic"] == settings.raw_topic == "exam.webhooks.raw"
    assert kafka["bootstrapServers"] == settings.kafka.bootstrap_servers
    assert kafka["offsetResetPolicy"] == "earliest"
    assert int(kafka["lagThreshold"]) > 0
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]


def test_keda_never_scales_past_the_default_partition_count_of_create_topics() -> None:
    partitions = default_partitions_of_create_topics()
    scaled = the("ScaledObject", "exam-events-consumer")
    job_command = container("exam-events-topics")["command"]
    source = (K8S / "keda" / "scaledobject.yaml").read_text()

    assert scaled["spec"]["maxReplicaCount"] == partitions
    assert job_command[job_command.index("--partitions") + 1] == str(partitions)
    assert "Keep the two equal" in source


# --- metrics of the dashboard and the alerts -------------------------------------------------------


def alert_rules() -> list[Doc]:
    return [
        rule for group in yaml_documents(ALERTS)[0]["groups"] for rule in group["rules"] if "alert" in rule
    ]


def dashboard() -> Doc:
    loaded: Doc = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_targets() -> list[tuple[Doc, Doc]]:
    return [(panel, target) for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every alert and every dashboard target."""
    found = [(f"alert {rule['alert']}", str(rule["expr"])) for rule in alert_rules()]
    found += [(f"panel {panel['title']!r}", str(target["expr"])) for panel, target in dashboard_targets()]
    return found


def queried_metrics() -> list[str]:
    return sorted({name for _, expr in queries() for name in METRIC.findall(expr)})


def exposed_series(exposition: str) -> set[str]:
    """Series names a scrape of this text gives (histograms as _bucket, _sum, _count), including
    those of labelled metrics that have no child yet (only their TYPE line shows)."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
        elif line and not line.startswith("#"):
            match = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
            assert match is not None
            names.add(match.group())
    return names


def series_labels(metrics: object) -> dict[str, set[str]]:
    """Series name -> label names, for each metric object held by a metrics container."""
    labels: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        name, kind = metric._name, metric._type
        declared = set(getattr(metric, "_labelnames", ()))
        if kind == "counter":
            labels[f"{name}_total"] = declared
        elif kind == "histogram":
            labels |= {
                f"{name}_bucket": declared | {"le"},
                f"{name}_sum": declared,
                f"{name}_count": declared,
            }
        else:
            labels[name] = declared
    return labels


async def get_metrics(app: Any) -> str:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pod") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    return response.text


@pytest.fixture(scope="module")
async def processes() -> dict[str, Any]:
    """The two processes' /metrics text and metrics objects, apps built without a broker."""
    unreachable = KafkaConnectionSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    consumer: ConsumerApp = create_consumer_app(ConsumerSettings(kafka=unreachable, rules=RulesSettings()))
    ingress = create_ingress_app(
        IngressSettings(allow_unauthenticated=True, kafka=unreachable), producer=NoopProducer()
    )
    return {
        "text": await get_metrics(consumer) + await get_metrics(ingress.admin),
        "labels": series_labels(consumer.metrics) | series_labels(ingress.metrics),
    }


def test_the_dashboard_and_the_alerts_query_the_contracted_metrics() -> None:
    assert set(queried_metrics()) >= {
        "exam_events_ingress_requests_total",
        "exam_events_ingress_produce_seconds_bucket",
        "exam_events_ingress_kafka_unreachable",
        "exam_events_consumer_records_consumed_total",
        "exam_events_consumer_events_emitted_total",
        "exam_events_consumer_records_dead_lettered_total",
        "exam_events_consumer_records_unrouted_total",
        "exam_events_consumer_in_flight_batch_seconds",
        "exam_events_consumer_partition_lag",
        "exam_events_consumer_group_lag",
    }


@pytest.mark.parametrize("name", queried_metrics())
def test_every_metric_the_dashboard_and_the_alerts_query_is_on_a_process_metrics_page(
    name: str, processes: dict[str, Any]
) -> None:
    assert name in exposed_series(processes["text"]), f"{name} is not exposed on /metrics"


def test_the_exposition_reader_accepts_histogram_series_and_rejects_unknown_names(
    processes: dict[str, Any],
) -> None:
    exposed = exposed_series(processes["text"])

    assert {
        "exam_events_ingress_produce_seconds_bucket",
        "exam_events_consumer_batch_seconds_count",
    } <= exposed
    assert "exam_events_consumer_events_emitted_total" in exposed  # labelled, no child yet
    assert "exam_events_ingress_produce_seconds" not in exposed  # a histogram has no such series
    assert "exam_events_consumer_records_consumed" not in exposed  # counters end in _total


def grouping_labels(expr: str) -> set[str]:
    return {
        label.strip()
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
        for label in group.split(",")
        if label.strip()
    }


def test_every_label_a_query_filters_or_groups_by_is_a_label_of_a_metric_it_reads(
    processes: dict[str, Any],
) -> None:
    labels: dict[str, set[str]] = processes["labels"]
    for where, expr in queries():
        read = METRIC.findall(expr)
        for name, matchers in re.findall(r"\b(exam_events_[a-z0-9_]+)\{([^}]*)\}", expr):
            for label in re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers):
                assert label in labels.get(name, set()) | SCRAPE_LABELS, f"{where}: {name} has no {label}"
        available = set().union(*(labels.get(name, set()) for name in read)) | SCRAPE_LABELS
        assert grouping_labels(expr) <= available, f"{where}: groups by {grouping_labels(expr) - available}"


def test_legends_and_alert_annotations_only_name_labels_their_query_keeps() -> None:
    for panel, target in dashboard_targets():
        legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        assert legend_labels <= grouping_labels(target["expr"]), panel["title"]
    for rule in alert_rules():
        named = set(re.findall(r"\$labels\.(\w+)", json.dumps(rule["annotations"])))
        assert named <= grouping_labels(rule["expr"]), rule["alert"]


# --- the dashboard ---------------------------------------------------------------------------------


def test_the_dashboard_is_grafana_json_with_unique_panel_ids_and_a_prometheus_query_per_panel() -> None:
    board = dashboard()
    panels = board["panels"]
    ids = [panel["id"] for panel in panels]

    assert board["uid"] == "exam-events"
    assert board["schemaVersion"] >= 36
    assert len(ids) == len(set(ids))
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert METRIC.search(target["expr"]), panel["title"]


def test_the_dashboard_shows_requests_latency_throughput_lag_dead_letters_and_stuck_batches() -> None:
    def queries_of(title: str) -> str:
        (panel,) = [p for p in dashboard()["panels"] if p["title"] == title]
        return "\n".join(t["expr"] for t in panel["targets"])

    requests = queries_of("Webhook requests by status")
    latency = queries_of("Produce latency (p50, p99)")

    assert "exam_events_ingress_requests_total" in requests
    assert "by (status)" in requests
    assert "histogram_quantile(0.5," in latency
    assert "histogram_quantile(0.99," in latency
    assert "exam_events_ingress_produce_seconds_bucket" in latency
    assert "exam_events_consumer_records_consumed_total" in queries_of("Consumer throughput")
    assert "by (topic, partition)" in queries_of("Lag per partition")
    assert "sum(exam_events_consumer_group_lag)" in queries_of("Total lag of the group")
    assert "exam_events_consumer_records_dead_lettered_total" in queries_of(
        "Dead-lettered and unrouted webhooks"
    )
    assert "exam_events_consumer_in_flight_batch_seconds" in queries_of(
        "Stuck batches: age of the batch in flight"
    )


# --- alerts and their runbook ----------------------------------------------------------------------


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_entries() -> dict[str, str]:
    """Anchor -> text of each `###` entry of the "Alerts runbook" section of docs/operations.md."""
    text = OPERATIONS.read_text()
    section = text.split("\n## Alerts runbook\n", 1)[1].split("\n## ", 1)[0]
    entries = re.split(r"^### ", section, flags=re.MULTILINE)[1:]
    return {github_anchor(entry.split("\n", 1)[0]): entry for entry in entries}


def test_the_alerts_cover_lag_dead_letters_stuck_batches_and_503s() -> None:
    names = {rule["alert"] for rule in alert_rules()}

    assert names >= {
        "ExamEventsConsumerLagGrowing",
        "ExamEventsDeadLetters",
        "ExamEventsConsumerBatchStuck",
        "ExamEventsIngress503",
    }


def test_every_alert_has_a_severity_a_summary_and_a_runbook_entry_that_says_what_to_check_and_do() -> None:
    entries = runbook_entries()
    for rule in alert_rules():
        annotations = rule["annotations"]
        page, anchor = annotations["runbook"].split("#")
        entry = entries.get(anchor)

        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert annotations["summary"], rule["alert"]
        assert page == "docs/operations.md", rule["alert"]
        assert anchor == github_anchor(rule["alert"]), rule["alert"]
        assert entry is not None, f"{rule['alert']}: no entry #{anchor} in the Alerts runbook"
        for part in ("**What it means.**", "**How to check.**", "**What to do.**"):
            assert part in entry, f"{rule['alert']}: {part}"
        assert re.search(r"`exam-events (lag|tail|replay|topics)\b", entry), rule["alert"]


def test_every_runbook_entry_belongs_to_an_alert_and_its_links_resolve() -> None:
    alerts = {github_anchor(rule["alert"]) for rule in alert_rules()}
    entries = runbook_entries()

    assert set(entries) == alerts
    for entry in entries.values():
        for link in re.findall(r"\]\(#([^)]+)\)", entry):
            assert link in entries, link


def test_the_runbook_uses_the_lag_tail_and_dry_run_replay_commands() -> None:
    text = "\n".join(runbook_entries().values())

    assert "`exam-events lag`" in text
    assert "`exam-events tail exam.webhooks.dlq" in text
    assert "`exam-events replay --from exam.webhooks.dlq --dry-run`" in text


def test_operations_md_tells_the_operators_story_then_deployment_and_the_runbook() -> None:
    lines = OPERATIONS.read_text().splitlines()
    sections = [line for line in lines if line.startswith("## ")]

    assert lines[0].startswith("# ")
    assert sections == [
        "## The operator's story: an event the consumer did not know yet",
        "## Topics",
        "## On a replicated cluster: the settings the guarantees need",
        "## Deployment",
        "## Alerts runbook",
    ]


# --- promtool --------------------------------------------------------------------------------------

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian: apt-get install prometheus, or extract usr/bin/promtool "
    "from `apt-get download prometheus`)",
)


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@needs_promtool
def test_promtool_accepts_the_alert_rules() -> None:
    checked = promtool("check", "rules", str(ALERTS))

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    tested_alerts = {
        t["alertname"] for test in yaml_documents(ALERT_TESTS)[0]["tests"] for t in test["alert_rule_test"]
    }
    tested = promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)

    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert {"ExamEventsConsumerLagGrowing", "ExamEventsIngress503"} <= tested_alerts
    assert tested_alerts == {rule["alert"] for rule in alert_rules()}


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    rules = [
        {
            "record": f"dashboard:panel_{panel['id']}:{target['refId']}",
            "expr": target["expr"].replace("$__rate_interval", "5m"),
        }
        for panel, target in dashboard_targets()
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    checked = promtool("check", "rules", str(path))

    assert checked.returncode == 0, checked.stdout + checked.stderr
