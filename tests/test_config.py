"""Config loading and validation: every problem at once, with key paths, never a secret."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from collector_plugin.cli import main, prepare_run
from collector_plugin.config import load_config, parse_config, parse_listen_address, substitute_env
from collector_plugin.durations import parse_duration
from collector_plugin.errors import ConfigError
from collector_plugin.plugins import load_sources
from collector_plugin.settings import load_settings, resolve

DATA = Path(__file__).parent / "testdata"
REGISTRY = load_sources()
ENV = {"TEST_AK": "AKEXAMPLE", "TEST_SK": "SKEXAMPLE-SECRET"}


def problems(name: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(DATA / name, REGISTRY, environ=environ or {})
    return info.value.problems


def test_full_example_is_valid_and_substitutes_env() -> None:
    config = load_config(DATA / "valid_full.yaml", REGISTRY, environ=ENV)
    assert config.modelarts.auth.ak == "AKEXAMPLE"
    assert config.modelarts.auth.sk is not None and config.modelarts.auth.sk.get_secret_value() == "SKEXAMPLE-SECRET"
    assert config.checkpoint.path == "/tmp/checkpoints.db"  # ${env:X:-default}
    assert set(config.sources) == {
        "training_task_logs",
        "training_job_logs_v1",
        "training_job_events",
        "service_update_logs",
    }
    assert config.sources["training_job_events"].poll_interval == 10.0
    assert config.sources["service_update_logs"].poll_interval == 30.0
    assert config.modelarts.timeout == 20.0
    assert config.exporter.protocol == "grpc"


def test_missing_field_has_key_path() -> None:
    assert problems("invalid_missing_job_id.yaml") == ["sources.training_task_logs.jobs[0].id: field required"]


def test_unknown_keys_get_did_you_mean() -> None:
    found = problems("invalid_unknown_key.yaml")
    assert "exportr: unknown key; did you mean 'exporter'?" in found
    assert "sources.training_task_logs.poll_intervl: unknown key; did you mean 'poll_interval'?" in found
    assert len(found) == 2


def test_unknown_source_names_the_registered_ones() -> None:
    assert problems("invalid_unknown_source.yaml") == [
        "sources.training_job_event: unknown source; did you mean 'training_job_events'?"
    ]


def test_bad_duration_is_explained() -> None:
    (problem,) = problems("invalid_bad_duration.yaml")
    assert problem.startswith("sources.training_job_events.poll_interval: invalid duration")
    assert "250ms, 5s, 1m" in problem


def test_every_problem_is_reported_at_once() -> None:
    found = problems("invalid_bad_values.yaml")
    paths = sorted(p.split(":")[0] for p in found)
    assert paths == [
        "exporter.protocol",
        "sources.training_job_logs_v1.jobs[0].job_id",
        "sources.training_task_logs.start_at",
    ]


def test_no_credentials_says_what_to_do() -> None:
    (problem,) = problems("invalid_no_credentials.yaml")
    assert problem.startswith("modelarts.auth: no credentials")
    assert "HUAWEICLOUD_SDK_AK" in problem


def test_two_auth_methods_rejected_without_leaking_secrets() -> None:
    found = problems("invalid_two_auth_methods.yaml")
    assert found == ["modelarts.auth: use one authentication method, not ak/sk and token"]
    assert "SUPERSECRET" not in repr(found)


def test_credentials_fall_back_to_sdk_environment() -> None:
    raw = {"modelarts": {"region": "cn-north-4"}}
    env = {"HUAWEICLOUD_SDK_AK": "AK1", "HUAWEICLOUD_SDK_SK": "SK1", "HUAWEICLOUD_SDK_PROJECT_ID": "proj"}
    config = parse_config(raw, REGISTRY, environ=env)
    assert config.modelarts.auth.ak == "AK1"
    assert config.modelarts.project_id == "proj"
    assert config.modelarts.base_url == "https://modelarts.cn-north-4.myhuaweicloud.com"
    env["HUAWEICLOUD_SDK_SECURITY_TOKEN"] = "TMP"
    config = parse_config({"modelarts": {"region": "r"}}, REGISTRY, environ=env)
    assert config.modelarts.auth.security_token is not None


def test_yaml_syntax_error_names_line() -> None:
    (problem,) = problems("invalid_yaml_syntax.yaml")
    assert problem.startswith("line ")


def test_top_level_must_be_mapping() -> None:
    (problem,) = problems("invalid_not_mapping.yaml")
    assert problem.startswith("(top level): expected a mapping")


def test_missing_file() -> None:
    (problem,) = problems("does-not-exist.yaml")
    assert problem.startswith("cannot read the file")


def test_disabled_source_is_left_out() -> None:
    raw = {
        "modelarts": {"region": "r", "project_id": "p", "auth": {"token": "t"}},
        "sources": {"training_job_events": {"enabled": False}},
    }
    assert parse_config(raw, REGISTRY, environ={}).sources == {}


@pytest.mark.parametrize(
    ("text", "seconds"), [("250ms", 0.25), ("5s", 5.0), ("1m", 60.0), ("2h", 7200.0), (3, 3.0), ("1.5s", 1.5)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@given(st.text(alphabet=st.characters(blacklist_characters="$"), max_size=30))
def test_env_substitution_leaves_plain_text_alone(text: str) -> None:
    assert substitute_env(text, {}) == text


def test_env_substitution_forms() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert substitute_env("${env:A}-${env:B:-dflt}-${env:EMPTY:-e}-$${env:A}", env) == "1-dflt-e-${env:A}"
    assert substitute_env({"k": ["${env:A}"]}, env) == {"k": ["1"]}


def test_validate_command_exit_codes(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    assert main(["validate", "--config", str(DATA / "valid_full.yaml")]) == 0
    assert "valid (4 source(s) enabled" in capsys.readouterr().out
    assert main(["validate", "--config", str(DATA / "invalid_bad_values.yaml")]) == 1
    err = capsys.readouterr().err
    assert "exporter.protocol" in err and "Traceback" not in err


def test_validate_command_as_installed_script() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "collector_plugin.cli",
            "validate",
            "--config",
            str(DATA / "invalid_two_auth_methods.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "use one authentication method" in proc.stderr
    assert "SUPERSECRET" not in proc.stderr + proc.stdout


# --- validate rejects what start-up rejects ----------------------------------------------------

# Environment a case needs besides ENV; TEST_CHECKPOINT_DIR is always a fresh temporary directory.
CASE_ENV = {
    "invalid_environment.yaml": {"OTEL_EXPORTER_OTLP_PROTOCOL": "kafka"},
    "invalid_environment_endpoint.yaml": {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector.example.com:4318"},
}
# Cases of the bugs fixed here: each problem that used to pass validate and fail at start-up.
EXPECTED = {
    "invalid_password_without_region.yaml": [
        "modelarts.auth.iam_endpoint: required for password login when modelarts.region is not set"
    ],
    "invalid_listen_without_port.yaml": [
        'telemetry.listen: expected host:port with a port 0-65535 (e.g. 0.0.0.0:8888, [::1]:9464), or "" to turn it off'
    ],
    "invalid_endpoint_without_scheme.yaml": [
        "modelarts.endpoint: expected a URL starting with http:// or https:// and a host",
        "modelarts.auth.iam_endpoint: expected a URL starting with http:// or https:// and a host",
        "exporter.endpoint: expected a URL starting with http:// or https:// and a host",
    ],
    "invalid_environment.yaml": ["OTEL_EXPORTER_OTLP_PROTOCOL: 'kafka' is not supported (grpc, http/protobuf)"],
    "invalid_environment_endpoint.yaml": [
        "exporter.endpoint (or OTEL_EXPORTER_OTLP_[LOGS_]ENDPOINT): expected a URL starting with http:// or https://"
        " and a host"
    ],
    "invalid_checkpoint_is_a_directory.yaml": ["checkpoint.path: '{tmp}' is a directory: point it at a file inside it"],
    "invalid_replica_lease.yaml": [
        "checkpoint.lease_ttl: input should be greater than or equal to 1",
        "checkpoint.member_id: string should have at least 1 character",
    ],
    "invalid_missing_ca_file.yaml": [
        "modelarts.ca_file: cannot read '/nonexistent/modelarts-ca.pem' (No such file or directory)",
        "exporter.tls.ca_file (or OTEL_EXPORTER_OTLP_CERTIFICATE): cannot read '/nonexistent/collector-ca.pem'"
        " (No such file or directory)",
    ],
}
BAD_CONFIGS = sorted(p.name for p in DATA.glob("invalid_*.yaml"))


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_validate_rejects_what_startup_rejects_with_the_same_message(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**ENV, "TEST_CHECKPOINT_DIR": str(tmp_path), **CASE_ENV.get(name, {})}
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(key)
    with pytest.raises(ConfigError) as startup:
        prepare_run(str(DATA / name), env)
    if name in EXPECTED:
        assert startup.value.problems == [p.format(tmp=tmp_path) for p in EXPECTED[name]]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["validate", "--config", str(DATA / name)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"error: {startup.value.source}: invalid config",
        *(f"  {problem}" for problem in startup.value.problems),
    ]
    assert "SUPERSECRET" not in captured.err


def test_settings_are_resolved_once_and_frozen(tmp_path: Path) -> None:
    env = {**ENV, "TEST_CHECKPOINT_DIR": str(tmp_path), "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod"}
    settings = load_settings(DATA / "valid_full.yaml", REGISTRY, env)
    assert settings.exporter.endpoint == "http://localhost:4317"
    assert settings.checkpoint_path == str(tmp_path / "checkpoints.db")
    assert settings.auth.method == "aksk" and settings.auth.iam_endpoint == ""
    assert settings.telemetry.address == ("0.0.0.0", 8888)
    resource = settings.resource.resource(
        {"service.name": "modelarts-training", "cloud.region": "cn-north-4"}
    ).as_dict()
    assert resource["deployment.environment"] == "prod"
    assert resource["cloud.region"] == "cn-north-4" and resource["service.name"] == "modelarts-training"
    env["OTEL_RESOURCE_ATTRIBUTES"] = "deployment.environment=changed"
    assert settings.resource.resource({"service.name": "x"}).as_dict()["deployment.environment"] == "prod"
    with pytest.raises(AttributeError):
        settings.checkpoint_path = "/elsewhere"  # type: ignore[misc]


def test_password_login_resolves_the_regional_iam_endpoint() -> None:
    auth = {"username": "u", "password": "pw", "domain_name": "acme"}
    raw = {"modelarts": {"region": "cn-north-4", "project_id": "p", "auth": auth}}
    settings = resolve(parse_config(raw, REGISTRY, environ={}), {})
    assert settings.auth.iam_endpoint == "https://iam.cn-north-4.myhuaweicloud.com"


def test_empty_listen_turns_telemetry_off() -> None:
    raw = {"modelarts": {"region": "r", "project_id": "p", "auth": {"token": "t"}}, "telemetry": {"listen": ""}}
    assert parse_config(raw, REGISTRY, environ={}).telemetry.listen == ""


_HOSTS = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True),
    st.just(""),
)


@given(host=_HOSTS, port=st.integers(min_value=0, max_value=65535))
def test_listen_addresses_in_range_are_accepted_and_read_back(host: str, port: int) -> None:
    """One parser serves validate and the listener, so what validate accepts is what binds."""
    assert parse_listen_address(f"{host}:{port}") == (host.strip("[]") or "0.0.0.0", port)


@given(host=_HOSTS, port=st.integers(min_value=65536, max_value=10**6))
def test_listen_ports_out_of_range_are_rejected(host: str, port: int) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_listen_address(f"{host}:{port}")


@given(st.text(max_size=30))
def test_listen_without_a_numeric_port_is_rejected(text: str) -> None:
    assume(not re.search(r":[0-9]{1,5}\s*$", text))
    with pytest.raises(ValueError, match="host:port"):
        parse_listen_address(text)


@pytest.mark.parametrize("listen", ["::1:9464", "[::1]", "localhost", "127.0.0.1:abc", "host:", "a b:80"])
def test_listen_examples_rejected(listen: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_listen_address(listen)
