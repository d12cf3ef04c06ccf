"""The Helm chart, rendered by Helm's own engine (helm-python-sdk) for every ci/*-values.yaml.

Every manifest is validated against the Kubernetes schemas (kubernetes-validate, strict), then
the parts that make the receiver work are checked: probes on the telemetry port the config
really listens on, the non-root read-only security context, credentials wired from the Secret,
checkpoint and config volumes, the bundled collector's config; the rendered ConfigMap's config is
fed to ``modelarts-receiver validate``. Bad values must be rejected by values.schema.json.
"""

from __future__ import annotations

import base64
import copy
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from collector_plugin.config import DEFAULT_CHECKPOINT_PATH, parse_config
from collector_plugin.plugins import load_sources

ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = ROOT / "helm" / "modelarts-otel-receiver"
CI_FILES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
KUBE_VERSION = "1.30.0"
RELEASE, NAMESPACE = "mr", "observability"
CONFIG_MOUNT = "/etc/modelarts-receiver"
DATA_MOUNT = "/var/lib/modelarts-receiver"
CREDENTIAL_ENV = (
    "HUAWEICLOUD_SDK_AK",
    "HUAWEICLOUD_SDK_SK",
    "HUAWEICLOUD_SDK_SECURITY_TOKEN",
    "HUAWEICLOUD_SDK_PROJECT_ID",
)
FAKE_EXISTING_SECRET = "fake-value-from-existing-secret"
FAKE_DATABASE_URL = "postgresql://receiver:fake-password@postgres.example:5432/receiver"


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


def ci_values(path: Path) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    return values


class Rendered:
    """The manifests of one render, indexed by kind (and the values that made them)."""

    def __init__(self, chart: helm_python.Chart, values: dict[str, Any]) -> None:
        self.values = values
        self.merged = chart.merge_values(values)
        self.files = chart.render(values, name=RELEASE, namespace=NAMESPACE)
        self.notes = next((text for name, text in self.files.items() if name.endswith("NOTES.txt")), "")
        self.manifests: list[dict[str, Any]] = []
        for name, text in self.files.items():
            if name.endswith(".yaml"):
                self.manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        (found,) = self.all(kind)
        return found

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    def container(self, name: str) -> dict[str, Any]:
        (found,) = [c for c in self.pod["containers"] if c["name"] == name]
        return found

    @property
    def receiver_config_text(self) -> str:
        text: str = self.one("ConfigMap")["data"]["config.yaml"]
        return text

    def environ(self) -> dict[str, str]:
        """The receiver container's credential variables, resolved as the kubelet would."""
        secrets = {s["metadata"]["name"]: s.get("data", {}) for s in self.all("Secret")}
        env: dict[str, str] = {}
        for var in self.container("receiver").get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref is None:
                continue
            data = secrets.get(ref["name"])
            if data is None:  # an existing Secret: its content is not ours to see
                env[var["name"]] = (
                    FAKE_DATABASE_URL if var["name"] == "MODELARTS_CHECKPOINT_URL" else FAKE_EXISTING_SECRET
                )
            elif ref["key"] in data:
                env[var["name"]] = base64.b64decode(data[ref["key"]]).decode()
            else:
                assert ref.get("optional"), f"{var['name']} refers to a key the Secret lacks"
        return env


@pytest.fixture(scope="module", params=CI_FILES, ids=lambda p: p.name)
def rendered(request: pytest.FixtureRequest, chart: helm_python.Chart) -> Rendered:
    return Rendered(chart, ci_values(request.param))


def test_the_ci_values_cover_the_documented_setups() -> None:
    names = {p.name for p in CI_FILES}
    assert {
        "standalone-values.yaml",
        "bundled-collector-values.yaml",
        "existing-secret-values.yaml",
        "emptydir-values.yaml",
        "replicas-values.yaml",
    } <= names


@pytest.mark.parametrize("path", CI_FILES, ids=lambda p: p.name)
def test_helm_lint_is_clean(path: Path) -> None:
    report = helm_python.lint(
        CHART_DIR, ci_values(path), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}"
    )
    assert not report["errors"], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_every_manifest_is_valid_kubernetes(rendered: Rendered) -> None:
    assert {"Deployment", "ConfigMap"} <= {m["kind"] for m in rendered.manifests}
    for manifest in rendered.manifests:
        if manifest["kind"] == "ServiceMonitor":  # a CRD: no schema shipped; checked below
            continue
        kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        assert manifest["metadata"]["namespace"] == NAMESPACE


def test_the_rendered_config_validates(rendered: Rendered) -> None:
    raw = yaml.safe_load(rendered.receiver_config_text)
    config = parse_config(raw, load_sources(), environ=rendered.environ())
    assert config.checkpoint.path == DEFAULT_CHECKPOINT_PATH
    assert config.checkpoint.path.startswith(DATA_MOUNT + "/")
    assert config.sources


def test_the_rendered_config_validates_with_the_cli(rendered: Rendered, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(rendered.receiver_config_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUAWEICLOUD_SDK_", "OTEL_"))}
    env.update(rendered.environ())
    script = Path(sys.executable).with_name("modelarts-receiver")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "collector_plugin.cli"]
    result = subprocess.run(
        [*command, "validate", "--config", str(path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_receiver_runs_the_image_entrypoint_with_the_mounted_config(
    rendered: Rendered, chart: helm_python.Chart
) -> None:
    receiver = rendered.container("receiver")
    assert receiver["args"] == ["run", "--config", f"{CONFIG_MOUNT}/config.yaml"]
    repository = rendered.merged["image"]["repository"]
    tag = rendered.values.get("image", {}).get("tag") or chart.metadata["appVersion"]
    assert receiver["image"] == f"{repository}:{tag}"


def test_probes_hit_the_port_the_config_listens_on(rendered: Rendered) -> None:
    receiver = rendered.container("receiver")
    ports = {p["name"]: p["containerPort"] for p in receiver["ports"]}
    listen = yaml.safe_load(rendered.receiver_config_text)["telemetry"]["listen"]
    assert listen == f"0.0.0.0:{rendered.merged['telemetry']['port']}"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http = receiver[probe]["httpGet"]
        assert http["path"] == path
        assert ports[http["port"]] == int(listen.rsplit(":", 1)[1])


def test_the_security_context_is_non_root_and_read_only(rendered: Rendered) -> None:
    assert rendered.pod["securityContext"]["runAsNonRoot"] is True
    assert rendered.pod["automountServiceAccountToken"] is False
    for container in rendered.pod["containers"]:
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert "limits" in container["resources"] and "requests" in container["resources"]


def test_credentials_come_from_the_secret_and_nowhere_else(rendered: Rendered) -> None:
    creds = rendered.merged["credentials"]
    env = {v["name"]: v for v in rendered.container("receiver").get("env", [])}
    refs = {name: env[name]["valueFrom"]["secretKeyRef"] for name in CREDENTIAL_ENV}
    secret_name = creds["existingSecret"] or f"{RELEASE}-modelarts-otel-receiver-credentials"
    assert {ref["name"] for ref in refs.values()} == {secret_name}
    keys = creds["secretKeys"]
    assert [refs[n]["key"] for n in CREDENTIAL_ENV] == [
        keys["ak"],
        keys["sk"],
        keys["securityToken"],
        keys["projectId"],
    ]
    assert not refs["HUAWEICLOUD_SDK_AK"].get("optional") and not refs["HUAWEICLOUD_SDK_SK"].get("optional")
    assert refs["HUAWEICLOUD_SDK_SECURITY_TOKEN"]["optional"] is True
    secrets = rendered.all("Secret")
    if creds["existingSecret"]:
        assert secrets == []
        return
    (secret,) = secrets
    assert secret["metadata"]["name"] == secret_name
    assert base64.b64decode(secret["data"][keys["sk"]]).decode() == creds["sk"]
    others = "\n".join(text for name, text in rendered.files.items() if not name.endswith("secret.yaml"))
    for value in (creds["ak"], creds["sk"], creds["securityToken"]):
        if value:
            assert value not in others, "a credential leaked outside the Secret"


def test_config_and_checkpoint_volumes(rendered: Rendered) -> None:
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    mounts = {m["mountPath"]: m for m in rendered.container("receiver")["volumeMounts"]}
    config_volume = volumes[mounts[CONFIG_MOUNT]["name"]]
    assert config_volume["configMap"]["name"] == rendered.one("ConfigMap")["metadata"]["name"]
    assert {"key": "config.yaml", "path": "config.yaml"} in config_volume["configMap"]["items"]
    assert mounts[CONFIG_MOUNT]["readOnly"] is True
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    data = volumes[mounts[DATA_MOUNT]["name"]]
    persistence = rendered.merged["persistence"]
    if persistence["type"] == "emptyDir" or rendered.merged["checkpointDatabase"]["urlSecret"]["name"]:
        assert data["emptyDir"]["sizeLimit"] == persistence["emptyDirSizeLimit"]
        assert rendered.all("PersistentVolumeClaim") == []
    elif persistence["existingClaim"]:
        assert data["persistentVolumeClaim"]["claimName"] == persistence["existingClaim"]
        assert rendered.all("PersistentVolumeClaim") == []
    else:
        pvc = rendered.one("PersistentVolumeClaim")
        assert data["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        assert pvc["spec"]["resources"]["requests"]["storage"] == persistence["size"]
    assert rendered.one("Deployment")["spec"]["strategy"]["type"] == "Recreate"


def test_selectors_services_and_service_monitor_line_up(rendered: Rendered) -> None:
    deployment = rendered.one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
    port = rendered.merged["telemetry"]["port"]
    if rendered.merged["metrics"]["podAnnotations"]:
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
    else:
        assert "prometheus.io/scrape" not in annotations
    services = rendered.all("Service")
    if not rendered.merged["service"]["enabled"]:
        assert services == [] and rendered.all("ServiceMonitor") == []
        return
    (service,) = services
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == port and service_port["targetPort"] == "telemetry"
    for monitor in rendered.all("ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == service_port["name"] and endpoint["path"] == "/metrics"
        assert monitor["metadata"]["labels"].items() >= rendered.merged["metrics"]["serviceMonitor"]["labels"].items()


def test_the_bundled_collector(rendered: Rendered) -> None:
    containers = {c["name"] for c in rendered.pod["containers"]}
    config = yaml.safe_load(rendered.receiver_config_text)
    if not rendered.merged["collector"]["enabled"]:
        assert containers == {"receiver"}
        assert "collector.yaml" not in rendered.one("ConfigMap")["data"]
        assert "localhost" not in config["exporter"]["endpoint"]
        return
    assert containers == {"receiver", "otel-collector"}
    sidecar = rendered.container("otel-collector")
    image, _, tag = sidecar["image"].rpartition(":")
    assert image == "otel/opentelemetry-collector-contrib" and re.fullmatch(r"\d+\.\d+\.\d+", tag)
    collector = yaml.safe_load(rendered.one("ConfigMap")["data"]["collector.yaml"])
    (config_arg,) = [a for a in sidecar["args"] if a.startswith("--config=")]
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    (mount_name,) = [n for n, p in mounts.items() if config_arg.endswith(p + "/collector.yaml")]
    assert {"key": "collector.yaml", "path": "collector.yaml"} in volumes[mount_name]["configMap"]["items"]

    grpc = collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert grpc.startswith("localhost:"), "the sidecar's OTLP port stays inside the pod"
    assert config["exporter"]["endpoint"] == f"http://{grpc}"
    assert config["exporter"]["tls"]["insecure"] is True
    pipeline = collector["service"]["pipelines"]["logs"]
    assert pipeline["receivers"] == ["otlp"]
    assert sorted(pipeline["exporters"]) == sorted(rendered.merged["collector"]["exporters"])
    for kind in ("processors", "exporters"):
        assert set(pipeline[kind]) <= set(collector[kind])
    metrics_port = collector["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]["port"]
    receiver_port = rendered.merged["telemetry"]["port"]
    assert len({metrics_port, receiver_port, 4317, 4318}) == 4, "ports clash inside the pod"
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    health = collector["extensions"]["health_check"]["endpoint"]
    assert ports[sidecar["livenessProbe"]["httpGet"]["port"]] == int(health.rsplit(":", 1)[1])
    assert ports[sidecar["readinessProbe"]["httpGet"]["port"]] == int(health.rsplit(":", 1)[1])
    assert rendered.merged["collector"]["exporters"].items() <= collector["exporters"].items()


def test_notes_render(rendered: Rendered) -> None:
    assert f"{RELEASE}-modelarts-otel-receiver" in rendered.notes
    assert "/readyz" in rendered.notes


def test_a_config_change_rolls_the_pod(chart: helm_python.Chart) -> None:
    values = ci_values(CHART_DIR / "ci" / "standalone-values.yaml")
    changed = copy.deepcopy(values)
    changed["config"]["telemetry"] = {"log_level": "debug"}
    before = Rendered(chart, values).one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    after = Rendered(chart, changed).one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert before["checksum/config"] != after["checksum/config"]


def test_the_chart_version_follows_the_package(chart: helm_python.Chart) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    assert version and chart.metadata["appVersion"] == version.group(1)
    assert chart.values["image"]["repository"] == "", "no public image: the user names the one they pushed"
    assert chart.values["replicaCount"] == 1
    assert chart.values["persistence"]["type"] == "pvc"


BASE = CHART_DIR / "ci" / "standalone-values.yaml"


def _with(changes: dict[str, Any]) -> dict[str, Any]:
    values = ci_values(BASE)

    def merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
        for key, value in patch.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(values, changes)
    return values


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"replicaCount": 2}, "/checkpointDatabase"),
        ({"replicaCount": 2, "checkpointDatabase": {"urlSecret": {"name": ""}}}, "/checkpointDatabase/urlSecret/name"),
        ({"persistence": {"type": "hostPath"}}, "/persistence/type"),
        ({"persistence": {"size": "lots"}}, "/persistence/size"),
        ({"credentials": {"ak": "", "sk": ""}}, "/credentials/ak"),
        ({"credentials": {"secretKeys": {"sk": ""}}}, "/credentials/secretKeys/sk"),
        ({"config": {"exporter": {"endpoint": ""}}}, "/config/exporter/endpoint"),
        ({"config": {"modelarts": {"auth": {"ak": "AK", "sk": "literal-secret"}}}}, "/config/modelarts/auth/sk"),
        ({"config": {"telemetry": {"listen": "0.0.0.0:9999"}}}, "/config/telemetry"),
        ({"telemetry": {"port": 70000}}, "/telemetry/port"),
        ({"securityContext": {"runAsNonRoot": False}}, "/securityContext/runAsNonRoot"),
        ({"podSecurityContext": {"runAsUser": 0}}, "/podSecurityContext/runAsUser"),
        ({"collector": {"enabled": True, "exporters": {"otlphttp/loki": None}}}, "/collector/exporters"),
        ({"collector": {"enabled": True}, "telemetry": {"port": 4317}}, "/telemetry/port"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor/interval"),
        ({"extraEnv": [{"value": "no name"}]}, "/extraEnv/0"),
        ({"unknownTopLevel": True}, None),
    ],
)
def test_bad_values_are_rejected_with_the_key_path(
    chart: helm_python.Chart, changes: dict[str, Any], message: str | None
) -> None:
    values = _with(changes)
    if message is None:  # the top level stays open (Helm passes global and subchart keys)
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
        return
    with pytest.raises(helm_python.HelmValuesError) as excinfo:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(excinfo.value)
    report = helm_python.lint(CHART_DIR, values, namespace=NAMESPACE)
    assert report["errors"] or any(m["severity"] >= 3 for m in report["messages"])


def test_the_base_of_the_bad_values_is_good(chart: helm_python.Chart) -> None:
    chart.render(_with({}), name=RELEASE, namespace=NAMESPACE)


def test_an_install_without_an_image_says_how_to_build_one(chart: helm_python.Chart) -> None:
    values = _with({})
    del values["image"]["repository"]
    with pytest.raises(helm_python.HelmRenderError, match=r"image\.repository is required") as excinfo:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert "docker build -t REGISTRY/modelarts-otel-receiver:VERSION ." in str(excinfo.value)


# ------------------------------------------------- the sidecar example on the official collector chart

OFFICIAL_CHART = Path(os.environ.get("OTEL_COLLECTOR_CHART", "/work/shared/vendor/opentelemetry-collector"))
SIDECAR_VALUES = ROOT / "examples" / "opentelemetry-collector-chart" / "values.yaml"


@pytest.fixture(scope="module")
def official_render() -> list[dict[str, Any]]:
    if not (OFFICIAL_CHART / "Chart.yaml").exists():
        pytest.skip(f"the official opentelemetry-collector chart is not at {OFFICIAL_CHART} (set OTEL_COLLECTOR_CHART)")
    with helm_python.Chart.load(OFFICIAL_CHART) as official:
        files = official.render(yaml.safe_load(SIDECAR_VALUES.read_text()), name="otel", namespace=NAMESPACE)
    return [doc for name, text in files.items() if name.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc]


def test_the_sidecar_example_renders_valid_kubernetes(official_render: list[dict[str, Any]]) -> None:
    for manifest in official_render:
        kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
    (deployment,) = [m for m in official_render if m["kind"] == "Deployment"]
    names = [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    assert "modelarts-receiver" in names


def test_the_sidecar_collector_acknowledges_only_what_loki_has(official_render: list[dict[str, Any]]) -> None:
    """No batch processor and no sending queue in the logs pipeline: both answer before sending."""
    (configmap,) = [m for m in official_render if m["kind"] == "ConfigMap" and "relay" in m.get("data", {})]
    collector = yaml.safe_load(configmap["data"]["relay"])
    logs = collector["service"]["pipelines"]["logs"]
    assert logs["processors"], "the chart's memory_limiter stays (it refuses, which the receiver retries)"
    assert not [p for p in logs["processors"] if p == "batch" or p.startswith("batch/")]
    for name in logs["exporters"]:
        exporter = collector["exporters"][name]
        assert exporter["sending_queue"]["enabled"] is False, name
        assert exporter["retry_on_failure"]["enabled"] is False, name


WHOLE_ROWS = {
    "config",
    "collector.exporters",
    "collector.config",
    "resources",
    "collector.resources",
    "podSecurityContext",
    "securityContext",
    "collector.securityContext",
    "livenessProbe",
    "readinessProbe",
}
"""Values documented as one row: free-form, or a Kubernetes object passed through."""


def _leaf_paths(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict) and node and prefix not in WHOLE_ROWS:
        for key, value in node.items():
            yield from _leaf_paths(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def test_the_readme_values_table_covers_every_value() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    documented = set(re.findall(r"^\|\s*`([^`]+)`\s*\|", readme, re.MULTILINE))
    missing = [path for path in _leaf_paths(defaults) if path not in documented]
    assert not missing, f"helm/modelarts-otel-receiver/README.md lacks rows for {missing}"


def test_several_replicas_share_postgresql_with_a_budget_and_spread(chart: helm_python.Chart) -> None:
    """replicaCount > 1: the URL only through a secretKeyRef, no PVC, a PDB, spread over nodes."""
    r = Rendered(chart, ci_values(CHART_DIR / "ci" / "replicas-values.yaml"))
    deployment = r.one("Deployment")
    assert deployment["spec"]["replicas"] == 3
    env = {var["name"]: var for var in r.container("receiver")["env"]}
    assert env["MODELARTS_CHECKPOINT_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "modelarts-receiver-postgres",
        "key": "url",
    }
    config = yaml.safe_load(r.receiver_config_text)
    assert config["checkpoint"] == {"url": "${env:MODELARTS_CHECKPOINT_URL}"}
    assert "postgresql://" not in "".join(r.files.values())  # never in a ConfigMap or anywhere rendered
    assert r.all("PersistentVolumeClaim") == []
    assert "emptyDir" in next(v for v in r.pod["volumes"] if v["name"] == "data")
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    (spread,) = r.pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == selector
    single = Rendered(chart, ci_values(BASE))
    assert single.all("PodDisruptionBudget") == [] and "topologySpreadConstraints" not in single.pod
