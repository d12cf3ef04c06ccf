"""Everything in examples/ is loaded here, so the documentation cannot rot.

Receiver configs validate (through the library and the CLI) and the full one names every key;
the collector config is consistent with the receiver's; every query in the Grafana dashboard
names only labels and attributes the receiver really sets (as Loki's OTLP endpoint translates
them) and only metrics the receiver really exposes; the sidecar example for the official
collector chart wires ports, volumes and endpoints consistently and validates as Kubernetes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Union

import kubernetes_validate
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel

from collector_plugin.config import Config, parse_config
from collector_plugin.mapping import LineMapper
from collector_plugin.plugins import DEFAULT_PLUGINS, load_sources
from collector_plugin.records import EMPTY_ATTRIBUTES
from collector_plugin.sources.modelarts.records import EVENT_SERVICE_UPDATE, EVENT_TRAINING_JOB, LOG_ATTRIBUTE_PREFIX
from collector_plugin.telemetry import Metrics

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PACKAGE = ROOT / "collector_plugin"
KUBE_VERSION = "1.30.0"
ENV = {
    "HUAWEICLOUD_SDK_AK": "AKIDEXAMPLE000000000",
    "HUAWEICLOUD_SDK_SK": "sk-example-0000000000000000000000000000",
    "HUAWEICLOUD_SDK_PROJECT_ID": "0123456789abcdef0123456789abcdef",
    "MY_POD_IP": "10.1.2.3",
}
RECEIVER_CONFIGS = ["config-minimal.yaml", "config-full.yaml"]

# What the receiver sets (see README "Records"), and how Loki's OTLP endpoint stores it.
RESOURCE_INDEXED = ("service.name", "service.instance.id", "cloud.region")  # in Loki's default index-label list
RESOURCE_METADATA = ("cloud.provider", "cloud.platform", "modelarts.project.id")
RECORD_ATTRIBUTES = (
    "modelarts.training_job.id",
    "modelarts.training_job.name",
    "modelarts.training_job.version.id",
    "modelarts.task.id",
    "modelarts.log.offset",
    "modelarts.log.complete",
    "modelarts.log.size",
    "modelarts.log.bytes_read",
    "modelarts.log.gaps",
    "log.file.name",
    "modelarts.event.source",
    "modelarts.service.id",
    "modelarts.service.name",
    "modelarts.service.update.result",
    "log.record.uid",
)
LOKI_SEVERITY_FIELDS = {"detected_level", "severity_text", "severity_number"}
LOKI_EVENT_NAME = "event_name"  # the record's EventName, structured metadata since Loki 3.8
SERVICE_NAMES = {"modelarts-training", "modelarts-inference"}


def loki_name(attribute: str) -> str:
    return attribute.replace(".", "_")


INDEX_LABELS = {loki_name(a) for a in RESOURCE_INDEXED}
LOKI_FIELDS = (
    INDEX_LABELS
    | {loki_name(a) for a in RESOURCE_METADATA + RECORD_ATTRIBUTES}
    | LOKI_SEVERITY_FIELDS
    | {LOKI_EVENT_NAME}
)


def load_yaml(name: str) -> Any:
    return yaml.safe_load((EXAMPLES / name).read_text())


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The installed ``modelarts-receiver`` console script (or the same entry point)."""
    script = Path(sys.executable).with_name("modelarts-receiver")
    command = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "import sys; from collector_plugin.cli import main; sys.exit(main())"]
    )
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HUAWEICLOUD_SDK_", "OTEL_"))}
    full_env.update(env)
    return subprocess.run([*command, *args], capture_output=True, text=True, env=full_env, timeout=120)


# ---------------------------------------------------------------- receiver configs


@pytest.mark.parametrize("name", RECEIVER_CONFIGS)
def test_receiver_config_validates(name: str) -> None:
    config = parse_config(load_yaml(name), load_sources(), environ=ENV, source_name=name)
    assert config.sources, "an example that reads nothing teaches nothing"
    assert config.modelarts.project_id == ENV["HUAWEICLOUD_SDK_PROJECT_ID"]
    assert config.modelarts.auth.method == "aksk"


@pytest.mark.parametrize("name", RECEIVER_CONFIGS)
def test_receiver_config_validates_through_the_cli(name: str) -> None:
    result = run_cli("validate", "--config", str(EXAMPLES / name), env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_the_cli_rejects_the_minimal_config_without_credentials() -> None:
    result = run_cli("validate", "--config", str(EXAMPLES / "config-minimal.yaml"), env={})
    assert result.returncode == 1
    assert "no credentials" in result.stderr or "no credentials" in result.stdout


def _models_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The pydantic model inside ``annotation`` (unwrapping Optional and list), and whether a list."""
    is_list = False
    current = annotation
    for _ in range(4):
        if isinstance(current, type) and issubclass(current, BaseModel):
            return current, is_list
        origin = typing.get_origin(current)
        args = [a for a in typing.get_args(current) if a is not type(None)]
        if origin in (Union, types.UnionType) and args:
            current = args[0]
        elif origin is list and args:
            is_list, current = True, args[0]
        else:
            return None, is_list
    return None, is_list


def missing_keys(model: type[BaseModel], data: dict[str, Any], path: str) -> list[str]:
    missing = []
    for name, info in model.model_fields.items():
        where = f"{path}.{name}" if path else name
        if name not in data:
            missing.append(where)
            continue
        inner, is_list = _models_in(info.annotation)
        value = data[name]
        if inner is None:
            continue
        if is_list:
            if not value:
                missing.append(f"{where}[0] (give one example item)")
            elif isinstance(value[0], dict):
                missing.extend(missing_keys(inner, value[0], f"{where}[0]"))
        elif isinstance(value, dict):
            missing.extend(missing_keys(inner, value, where))
    return missing


AUTH_ALTERNATIVES = ("token", "username", "password", "domain_name", "iam_endpoint")


def test_the_full_config_documents_every_key() -> None:
    text = (EXAMPLES / "config-full.yaml").read_text()
    raw = yaml.safe_load(text)
    raw_auth = raw["modelarts"]["auth"]
    for key in AUTH_ALTERNATIVES:  # mutually exclusive with ak/sk: shown as comments
        assert re.search(rf"^\s*#\s*{key}:", text, re.MULTILINE), f"modelarts.auth.{key} is not documented"
        raw_auth[key] = "documented"
    missing = missing_keys(Config, raw, "")
    registry = load_sources()
    builtin = [name for name, reg in registry.items() if reg.plugin in DEFAULT_PLUGINS]
    for name in builtin:
        section = raw["sources"].get(name)
        if section is None:
            missing.append(f"sources.{name}")
            continue
        missing.extend(missing_keys(registry[name].cls.config_model, section, f"sources.{name}"))
    assert not missing, "examples/config-full.yaml lacks: " + ", ".join(missing)


def test_the_full_config_states_the_real_defaults() -> None:
    """Where the example shows a default, it must be the code's default (comments cannot drift)."""
    config = parse_config(load_yaml("config-full.yaml"), load_sources(), environ=ENV)
    defaults = Config.model_validate({"modelarts": {"region": "x", "project_id": "p", "auth": {"token": "t"}}})
    assert config.exporter.batch == defaults.exporter.batch
    assert config.exporter.queue_size == defaults.exporter.queue_size
    assert config.modelarts.retry == defaults.modelarts.retry
    assert config.modelarts.rate_limit == defaults.modelarts.rate_limit
    assert config.checkpoint == defaults.checkpoint
    assert config.telemetry == defaults.telemetry
    assert config.shutdown == defaults.shutdown


def endpoint_port(endpoint: str) -> int:
    match = re.search(r":(\d+)(/|$)", endpoint)
    assert match, endpoint
    return int(match.group(1))


# ---------------------------------------------------------------- collector config


def test_the_collector_config_forwards_to_loki_over_otlp_without_acknowledging_early() -> None:
    cfg = load_yaml("collector-loki.yaml")
    pipeline = cfg["service"]["pipelines"]["logs"]
    for kind in ("receivers", "processors", "exporters"):
        for name in pipeline[kind]:
            assert name in cfg[kind], f"{kind} {name} is used but not defined"
    for name in cfg["service"]["extensions"]:
        assert name in cfg["extensions"]
    loki = [cfg["exporters"][name] for name in pipeline["exporters"] if name.split("/")[0] == "otlphttp"]
    assert loki and all(e["endpoint"].endswith("/otlp") for e in loki)
    assert all(e["sending_queue"]["enabled"] is False for e in loki)
    assert not any(name.split("/")[0] == "batch" for name in pipeline["processors"])
    grpc = cfg["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    minimal = parse_config(load_yaml("config-minimal.yaml"), load_sources(), environ=ENV)
    assert endpoint_port(minimal.exporter.endpoint) == endpoint_port(grpc)
    readers = cfg["service"]["telemetry"]["metrics"]["readers"]
    collector_port = readers[0]["pull"]["exporter"]["prometheus"]["port"]
    assert collector_port != endpoint_port(minimal.telemetry.listen), "the two would clash in one pod"


# ---------------------------------------------------------------- dashboard


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`')
_OPS = r"(?:=~|!~|!=|==|>=|<=|=|>|<)"
_PARSERS = re.compile(r"\|\s*(json|logfmt|regexp|pattern|unpack|line_format|label_format|unwrap|drop|keep)\b")


def logql_names(expr: str) -> tuple[set[str], set[str]]:
    """(labels in stream selectors, every other label or field the query filters or groups by)."""
    stripped = _STRING.sub('""', expr)
    selectors = re.findall(r"\{([^{}]*)\}", stripped)
    selector_names = set(re.findall(rf"(\w+)\s*{_OPS}", " ".join(selectors)))
    outside = re.sub(r"\{[^{}]*\}", " ", stripped)
    names = set(re.findall(rf"(\w+)\s*{_OPS}\s*[\"\d]", outside))
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", outside):
        names |= {n.strip() for n in group.split(",") if n.strip()}
    assert not _PARSERS.search(outside), f"parser stages add labels the receiver does not set: {expr}"
    return selector_names, names


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names used in matchers and groupings)."""
    stripped = _STRING.sub('""', expr)
    metrics = set(re.findall(r"\bmodelarts_receiver_\w+", stripped))
    labels = set()
    for matcher in re.findall(r"\{([^{}]*)\}", stripped):
        labels |= set(re.findall(rf"(\w+)\s*{_OPS}", matcher))
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", stripped):
        labels |= {n.strip() for n in group.split(",") if n.strip()}
    return metrics, labels


def exposed_metrics() -> dict[str, set[str]]:
    """Every sample name the receiver exposes, with its label names."""
    metrics = Metrics()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase) and value._labelnames:  # materialise one child
            value.labels(*("x" for _ in value._labelnames))
    out: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads((EXAMPLES / "grafana-dashboard.json").read_text())


def queries(dashboard: dict[str, Any], kind: str) -> list[str]:
    """Every query expression sent to a data source of ``kind`` (panels, annotations, variables)."""
    found: list[str] = []

    def visit(node: Any, datasource: str | None) -> None:
        if isinstance(node, dict):
            ds = node.get("datasource")
            if isinstance(ds, dict) and "type" in ds:
                datasource = ds["type"]
            if datasource == kind:
                if isinstance(node.get("expr"), str):
                    found.append(node["expr"])
                if isinstance(node.get("stream"), str):
                    found.append(node["stream"])
            for value in node.values():
                visit(value, datasource)
        elif isinstance(node, list):
            for value in node:
                visit(value, datasource)

    visit(dashboard, None)
    return found


def test_the_dashboard_has_the_promised_panels(dashboard: dict[str, Any]) -> None:
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for words in ("per job", "error", "events by level", "failed service updates", "lag", "exported"):
        assert words in titles, words
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["loki"]["type"] == variables["prometheus"]["type"] == "datasource"


def test_every_loki_query_names_only_what_the_receiver_sets(dashboard: dict[str, Any]) -> None:
    exprs = queries(dashboard, "loki")
    assert len(exprs) >= 8
    for expr in exprs:
        selector, names = logql_names(expr)
        assert selector, f"no stream selector: {expr}"
        assert selector <= INDEX_LABELS, f"only index labels can select streams: {expr}"
        assert names <= LOKI_FIELDS, f"{sorted(names - LOKI_FIELDS)} are not set by the receiver: {expr}"
        for service in re.findall(r'service_name\s*=~?\s*"([^"]*)"', expr):
            assert set(service.split("|")) <= SERVICE_NAMES, expr
    region_variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "region")
    assert region_variable["query"]["label"] in INDEX_LABELS


def _legends_and_variables(dashboard: dict[str, Any]) -> list[str]:
    texts = [v.get("label", "") + " " + json.dumps(v.get("query", "")) for v in dashboard["templating"]["list"]]
    for panel in dashboard["panels"]:
        texts += [t.get("legendFormat", "") for t in panel.get("targets", [])]
    return texts


def test_jobs_are_selected_and_shown_by_name_not_id(dashboard: dict[str, Any]) -> None:
    """People know a job by its name; a UUID in a legend or a variable tells them nothing."""
    for text in _legends_and_variables(dashboard):
        assert "training_job_id" not in text and "job id" not in text.lower(), text
    per_job = [t for p in dashboard["panels"] if "per job" in p["title"].lower() for t in p["targets"]]
    assert per_job
    for target in per_job:
        assert target["legendFormat"] == "{{modelarts_training_job_name}}"
        assert "sum by (modelarts_training_job_name)" in target["expr"]
    job_filtered = [e for e in queries(dashboard, "loki") if "$job" in e]
    assert job_filtered and all('modelarts_training_job_name=~"$job"' in e for e in job_filtered)
    assert not any("modelarts_training_job_id" in e for e in queries(dashboard, "loki"))


def test_every_prometheus_query_names_only_exposed_metrics(dashboard: dict[str, Any]) -> None:
    exposed = exposed_metrics()
    exprs = queries(dashboard, "prometheus")
    assert len(exprs) >= 10
    used: set[str] = set()
    for expr in exprs:
        metrics, labels = promql_names(expr)
        assert metrics, expr
        for metric in metrics:
            assert metric in exposed, f"{metric} is not a metric the receiver exposes: {expr}"
            used.add(metric)
        allowed = set().union(*(exposed[m] for m in metrics))
        assert labels <= allowed, f"{sorted(labels - allowed)} are not labels of {sorted(metrics)}"
    for needed in ("records_exported_total", "target_lag_bytes", "target_lag_seconds", "bytes_read_total"):
        assert f"modelarts_receiver_{needed}" in used


def test_the_attribute_list_matches_the_code() -> None:
    """The names the dashboard test allows must be names the package really writes."""
    source = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    mapper = LineMapper(
        scope="p",
        source="s",
        target="t",
        shared=EMPTY_ATTRIBUTES,
        resource=EMPTY_ATTRIBUTES,
        prefix=LOG_ATTRIBUTE_PREFIX,
    )
    line = mapper.record("a", 0, 0, continued=True, partial=True)
    done = mapper.complete(size=1, position=1, bytes_read=1, records=1, gaps=0, restarts=0, read_from=0, observed_ns=0)
    derived = {f'"{name}"' for name in {**line.attributes, **done.attributes}}
    for attribute in RESOURCE_INDEXED + RESOURCE_METADATA + RECORD_ATTRIBUTES:
        assert f'"{attribute}"' in source or f'"{attribute}"' in derived, (
            f"{attribute} is no longer set by collector_plugin"
        )
    for service in SERVICE_NAMES:
        assert f'"{service}"' in source


@pytest.mark.parametrize(
    "expr",
    [
        '{service_name="modelarts-training"} | modelarts_job_id="x"',
        '{service_name="modelarts-training", modelarts_training_job_id="x"}',
        'sum by (pod) (count_over_time({service_name="modelarts-training"}[5m]))',
        '{service_name="modelarts-training"} | json | level="error"',
    ],
)
def test_the_query_check_catches_names_the_receiver_does_not_set(expr: str) -> None:
    with pytest.raises(AssertionError):
        selector, names = logql_names(expr)
        assert selector <= INDEX_LABELS and names <= LOKI_FIELDS


# ---------------------------------------------------------------- alerting rules

RULE_KEYS = {"alert", "expr", "for", "labels", "annotations"}


def event_names() -> set[str]:
    """Every EventName the receiver writes."""
    mapper = LineMapper(
        scope="p",
        source="s",
        target="t",
        shared=EMPTY_ATTRIBUTES,
        resource=EMPTY_ATTRIBUTES,
        prefix=LOG_ATTRIBUTE_PREFIX,
    )
    built = [
        mapper.restarted(size=0, cursor=1, observed_ns=0),
        mapper.gap(start=0, end=1, reason="r", observed_ns=0),
        mapper.complete(size=1, position=1, bytes_read=1, records=1, gaps=0, restarts=0, read_from=0, observed_ns=0),
    ]
    return {r.event_name for r in built} | {EVENT_TRAINING_JOB, EVENT_SERVICE_UPDATE}


@pytest.fixture(scope="module")
def loki_rules() -> list[dict[str, Any]]:
    data = load_yaml("loki-rules.yaml")
    assert set(data) == {"groups"}, "a Loki rules file holds only groups"
    rules: list[dict[str, Any]] = []
    for group in data["groups"]:
        assert isinstance(group["name"], str) and group["name"]
        assert set(group) <= {"name", "interval", "limit", "rules"}, group["name"]
        for rule in group["rules"]:
            assert set(rule) == RULE_KEYS, f"{rule.get('alert')}: {sorted(RULE_KEYS ^ set(rule))}"
            assert re.fullmatch(r"[A-Za-z_]\w*", rule["alert"]), rule["alert"]
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
            rules.append(rule)
    return rules


def test_the_loki_rules_cover_what_an_ml_team_needs(loki_rules: list[dict[str, Any]]) -> None:
    names = " ".join(r["alert"].lower() for r in loki_rules)
    for words in ("failed", "outofmemory", "loss", "silent", "incomplete"):
        assert words in names, words
    readme = (EXAMPLES / "README.md").read_text()
    assert "loki-rules.yaml" in readme


def test_every_loki_rule_names_only_what_the_receiver_sets(loki_rules: list[dict[str, Any]]) -> None:
    known_events = event_names()
    for rule in loki_rules:
        expr = rule["expr"]
        selector, names = logql_names(expr)
        assert selector and selector <= INDEX_LABELS, f"{rule['alert']}: only index labels select streams"
        assert names <= LOKI_FIELDS, f"{rule['alert']}: {sorted(names - LOKI_FIELDS)} are not set by the receiver"
        for service in re.findall(r'service_name\s*=~?\s*"([^"]*)"', expr):
            assert set(service.split("|")) <= SERVICE_NAMES, rule["alert"]
        for event in re.findall(r'event_name\s*=\s*"([^"]*)"', expr):
            assert event in known_events, f"{rule['alert']}: no record has EventName {event}"
        templated = set(re.findall(r"\$labels\.(\w+)", json.dumps(rule["annotations"])))
        grouped = {n.strip() for g in re.findall(r"\bby\s*\(([^)]*)\)", expr) for n in g.split(",")}
        assert templated <= grouped, f"{rule['alert']}: annotations use labels the query drops"


def _rule(rules: list[dict[str, Any]], alert: str) -> str:
    (expr,) = [r["expr"] for r in rules if r["alert"] == alert]
    (pattern,) = re.findall(r"`([^`]*)`", expr)
    return str(pattern)


@pytest.mark.parametrize(
    ("line", "fires"),
    [
        ("epoch 3 step 100 loss: nan", True),
        ("train_loss=-inf lr=0.001", True),
        ("loss: tensor(nan, device='cuda:0')", True),
        ("Loss = NaN", True),
        ("loss: 0.35 inference time 3 ms", False),
        ("loss: 0.3 lr: inf", False),
        ("glossary: nan", False),
    ],
)
def test_the_loss_alert_matches_non_finite_losses_only(
    loki_rules: list[dict[str, Any]], line: str, fires: bool
) -> None:
    assert bool(re.search(_rule(loki_rules, "ModelArtsLossNotFinite"), line)) is fires


@pytest.mark.parametrize(
    ("line", "fires"),
    [
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", True),
        ("RuntimeError: CUDA error: out of memory", True),
        ("torch.cuda.OutOfMemoryError: ...", True),
        ("host memory 80% used", False),
    ],
)
def test_the_oom_alert_matches_cuda_out_of_memory(loki_rules: list[dict[str, Any]], line: str, fires: bool) -> None:
    assert bool(re.search(_rule(loki_rules, "ModelArtsCudaOutOfMemory"), line)) is fires


def test_the_prometheus_lag_rules_in_the_readme_name_exposed_metrics() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    (block,) = re.findall(r"## Alerting.*?```yaml\n(.*?)```", readme, re.S)
    exposed = exposed_metrics()
    used: set[str] = set()
    for group in yaml.safe_load(block)["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
            metrics, labels = promql_names(rule["expr"])
            assert metrics and metrics <= set(exposed), rule["alert"]
            assert labels <= set().union(*(exposed[m] for m in metrics)), rule["alert"]
            used |= metrics
    assert {"modelarts_receiver_target_lag_seconds", "modelarts_receiver_logs_drained_total"} <= used


# ---------------------------------------------------------------- sidecar of the official chart


@pytest.fixture(scope="module")
def sidecar_values() -> dict[str, Any]:
    values: dict[str, Any] = load_yaml("opentelemetry-collector-chart/values.yaml")
    return values


@pytest.fixture(scope="module")
def sidecar_configmap() -> dict[str, Any]:
    manifest: dict[str, Any] = load_yaml("opentelemetry-collector-chart/receiver-configmap.yaml")
    return manifest


def test_the_sidecar_configmap_is_valid_and_holds_a_valid_config(sidecar_configmap: dict[str, Any]) -> None:
    kubernetes_validate.validate(sidecar_configmap, KUBE_VERSION, strict=True)
    raw = yaml.safe_load(sidecar_configmap["data"]["config.yaml"])
    config = parse_config(raw, load_sources(), environ=ENV)
    assert config.exporter.endpoint == f"http://{ENV['MY_POD_IP']}:4317"


def test_the_sidecar_container_is_wired_consistently(
    sidecar_values: dict[str, Any], sidecar_configmap: dict[str, Any]
) -> None:
    (container,) = sidecar_values["extraContainers"]
    assert container["args"] == ["run", "--config", "/etc/modelarts-receiver/config.yaml"]
    volumes = {v["name"]: v for v in sidecar_values["extraVolumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts.values()) <= set(volumes)
    config_volume = volumes[mounts["/etc/modelarts-receiver"]]
    assert config_volume["configMap"]["name"] == sidecar_configmap["metadata"]["name"]
    assert "/var/lib/modelarts-receiver" in mounts and "/tmp" in mounts
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    raw = yaml.safe_load(sidecar_configmap["data"]["config.yaml"])
    config = parse_config(raw, load_sources(), environ=ENV)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listen_port = endpoint_port(config.telemetry.listen)
    assert listen_port != 8888, "the chart's collector serves its own metrics on 8888"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"]["path"] == path
        assert ports[container[probe]["httpGet"]["port"]] == listen_port
    assert sidecar_values["podAnnotations"]["prometheus.io/port"] == str(listen_port)
    env_names = {e["name"] for e in container["env"]}
    assert "MY_POD_IP" in env_names, "the exporter endpoint uses ${env:MY_POD_IP}"
    assert config.checkpoint.path.startswith("/var/lib/modelarts-receiver/")
    pipeline = sidecar_values["config"]["service"]["pipelines"]["logs"]
    assert set(pipeline["exporters"]) <= set(sidecar_values["config"]["exporters"])


def test_the_sidecar_validates_as_a_pod(sidecar_values: dict[str, Any]) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "otel-collector", "annotations": sidecar_values["podAnnotations"]},
        "spec": {
            "containers": [{"name": "otel-collector", "image": "otel/opentelemetry-collector-contrib"}]
            + sidecar_values["extraContainers"],
            "volumes": sidecar_values["extraVolumes"],
        },
    }
    kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)
