"""The receiver's YAML config: loading, ``${env:...}`` substitution and validation.

Validation reports every problem at once, each with its key path
(``sources.training_task_logs.jobs[0].id: field required``); unknown keys get a "did you mean"
hint. Messages never carry a value, so a secret cannot leak through a validation error.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from collector_plugin.durations import Duration
from collector_plugin.errors import ConfigError
from collector_plugin.source import SourceConfig

if TYPE_CHECKING:
    from collector_plugin.plugins import RegisteredSource

DEFAULT_CHECKPOINT_PATH = "/var/lib/modelarts-receiver/checkpoints.db"
ENV_AK = "HUAWEICLOUD_SDK_AK"
ENV_SK = "HUAWEICLOUD_SDK_SK"
ENV_SECURITY_TOKEN = "HUAWEICLOUD_SDK_SECURITY_TOKEN"
ENV_PROJECT_ID = "HUAWEICLOUD_SDK_PROJECT_ID"

_ENV_REF = re.compile(r"\$\$|\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
_LISTEN = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.%A-Za-z]+)\]|(?P<host>[A-Za-z0-9._-]*)):(?P<port>[0-9]{1,5})")
LISTEN_FORMS = 'expected host:port with a port 0-65535 (e.g. 0.0.0.0:8888, [::1]:9464), or "" to turn it off'
IAM_ENDPOINT_REQUIRED = "modelarts.auth.iam_endpoint: required for password login when modelarts.region is not set"


def parse_listen_address(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` -> (host, port); ``ValueError`` naming the forms.

    Stricter than a bare ``rpartition(":")``: an IPv6 host needs brackets, so ``::1:80`` is not
    silently read as host ``::1``.
    """
    match = _LISTEN.fullmatch(text.strip())
    if match is None or int(match["port"]) > 65535:
        raise ValueError(LISTEN_FORMS)
    return match["v6"] or match["host"] or "0.0.0.0", int(match["port"])


def check_url(value: str, *, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """Reject a URL without a scheme or host: ``modelarts.example.com`` would otherwise be taken
    as a path and fail only at the first request."""
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"expected a URL starting with {' or '.join(s + '://' for s in schemes)} and a host")
    return value


def _optional_url(value: str | None) -> str | None:
    return check_url(value) if value else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AuthConfig(_Strict):
    """One of: ``ak``+``sk`` (+``security_token``), ``token``, or an IAM password login."""

    ak: str | None = None
    sk: SecretStr | None = None
    security_token: SecretStr | None = None
    token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    domain_name: str | None = Field(default=None, description="Account (domain) name for IAM login.")
    iam_endpoint: str | None = Field(default=None, description="Defaults to https://iam.{region}.myhuaweicloud.com")

    _iam_url = field_validator("iam_endpoint")(_optional_url)

    @model_validator(mode="after")
    def _one_method(self) -> AuthConfig:
        methods = [
            name
            for name, present in (
                ("ak/sk", bool(self.ak or self.sk)),
                ("token", self.token is not None and bool(self.token.get_secret_value())),
                ("password", bool(self.username or self.password)),
            )
            if present
        ]
        if len(methods) > 1:
            raise ValueError(f"use one authentication method, not {' and '.join(methods)}")
        if "ak/sk" in methods and not (self.ak and self.sk and self.sk.get_secret_value()):
            raise ValueError("ak and sk must be given together")
        if "password" in methods and not (self.username and self.password and self.domain_name):
            raise ValueError("password login needs username, password and domain_name")
        if not methods:
            raise ValueError(f"no credentials: set ak and sk (or {ENV_AK} and {ENV_SK}), token, or username/password")
        return self

    @property
    def method(self) -> Literal["aksk", "token", "password"]:
        if self.ak:
            return "aksk"
        if self.token is not None:
            return "token"
        return "password"


class RetryConfig(_Strict):
    max_attempts: int = Field(default=6, ge=1, le=100)
    initial_backoff: Duration = 0.5
    max_backoff: Duration = 30.0


class RateLimitConfig(_Strict):
    requests_per_second: float = Field(default=20.0, gt=0)
    burst: int = Field(default=40, ge=1)


class ModelArtsConfig(_Strict):
    region: str = ""
    endpoint: str = ""
    project_id: str = ""
    auth: AuthConfig
    timeout: Duration = 30.0
    retry: RetryConfig = RetryConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    max_concurrency: int = Field(default=16, ge=1, le=1024)
    verify_tls: bool = True
    ca_file: str | None = None

    _endpoint_url = field_validator("endpoint")(_optional_url)

    @model_validator(mode="after")
    def _where(self) -> ModelArtsConfig:
        if not self.endpoint and not self.region:
            raise ValueError("set region (or endpoint)")
        if not self.project_id:
            raise ValueError(f"project_id is required (or set {ENV_PROJECT_ID})")
        return self

    @property
    def base_url(self) -> str:
        return (self.endpoint or f"https://modelarts.{self.region}.myhuaweicloud.com").rstrip("/")


class TlsConfig(_Strict):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = Field(default=False, description="Plain text gRPC / skip TLS verification.")


class BatchConfig(_Strict):
    max_records: int = Field(default=4000, ge=1)
    max_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, description="Stay well under the 4 MiB gRPC limit.")
    max_delay: Duration = 0.2  # like the Collector's batch processor: latency matters more than request count


# Encoded bytes held (pending + in flight) before sources wait: catching up a 96 MiB log must stay
# well under 150 MB RSS, whatever the size of its records.
DEFAULT_QUEUE_MAX_BYTES = 16 * 1024 * 1024


class ExporterConfig(_Strict):
    protocol: Literal["grpc", "http/protobuf"] = "grpc"
    endpoint: str = ""
    headers: dict[str, str] = {}
    compression: Literal["auto", "gzip", "none"] = Field(
        default="auto",
        description="auto: none for a collector on this host (a sidecar's loopback), gzip for one across a network.",
    )
    timeout: Duration = 10.0
    tls: TlsConfig = TlsConfig()
    batch: BatchConfig = BatchConfig()
    queue_size: int = Field(default=50_000, ge=1, description="Records held before sources wait.")
    queue_max_bytes: int = Field(
        default=DEFAULT_QUEUE_MAX_BYTES, ge=1024, description="Encoded bytes held before sources wait."
    )
    max_in_flight: int = Field(
        default=1, ge=1, le=16, description="1 keeps every log in order at the collector; 2 overlaps round trips."
    )
    retry_initial_backoff: Duration = 0.5
    retry_max_backoff: Duration = 30.0

    @field_validator("endpoint")
    @classmethod
    def _endpoint_url(cls, value: str, info: ValidationInfo) -> str:
        # gRPC takes a bare host:port as the Collector does; OTLP/HTTP needs a full URL.
        if value and (info.data.get("protocol") == "http/protobuf" or "://" in value):
            check_url(value)
        return value


class CheckpointConfig(_Strict):
    """``path`` (SQLite, one replica: the default) or ``url`` (PostgreSQL, several replicas), not both.

    ``url`` is any libpq URI (``postgresql://user@host/db``, ``postgresql:///db?host=/run/pg``);
    what it leaves out comes from the PG* environment variables. It may hold a password, so it is
    kept out of the repr and validation messages never quote it.
    """

    path: str = DEFAULT_CHECKPOINT_PATH
    url: str | None = Field(default=None, repr=False)
    lease_ttl: Duration = Field(
        default=15.0,
        ge=1.0,
        le=600.0,
        description="With url: how long a replica's target leases last unrenewed (renewed every third of it).",
    )
    member_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="With url: this replica's name among the members (default: host name, process id, random).",
    )

    @field_validator("url")
    @classmethod
    def _postgres_uri(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URI (or leave it out and set path for SQLite)")
        if info.data.get("path", DEFAULT_CHECKPOINT_PATH) != DEFAULT_CHECKPOINT_PATH:
            raise ValueError("set either path (SQLite) or url (PostgreSQL), not both")
        return value


class ResourceConfig(_Strict):
    attributes: dict[str, str | int | float | bool] = {}


DEFAULT_UNREADY_AFTER = 300.0


class TelemetryConfig(_Strict):
    listen: str = "0.0.0.0:8888"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "text"] = "auto"
    # How long every API call refused for auth (or every checkpoint commit failing) lasts before
    # /readyz fails: long enough that a transient refusal never flips it.
    unready_after: Duration = DEFAULT_UNREADY_AFTER

    @field_validator("unready_after")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not value > 0:
            raise ValueError("must be a positive duration, e.g. 5m")
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value.strip():
            parse_listen_address(value)
        return value.strip()

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class ShutdownConfig(_Strict):
    grace_period: Duration = 10.0


class Config(_Strict):
    """The whole file. ``sources`` holds each enabled source's validated config model."""

    modelarts: ModelArtsConfig
    sources: dict[str, Any] = {}
    exporter: ExporterConfig = ExporterConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    resource: ResourceConfig = ResourceConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    shutdown: ShutdownConfig = ShutdownConfig()


def default_iam_endpoint(region: str) -> str:
    return f"https://iam.{region}.myhuaweicloud.com"


def iam_endpoint(auth: AuthConfig, region: str) -> str:
    """The IAM endpoint a password login talks to; :class:`ConfigError` when there is none."""
    endpoint = auth.iam_endpoint or (default_iam_endpoint(region) if region else "")
    if not endpoint:
        raise ConfigError([IAM_ENDPOINT_REQUIRED])
    return endpoint


def _cross_field_problems(config: Config) -> list[str]:
    """Checks that span sections, so that ``validate`` rejects what start-up would."""
    ma = config.modelarts
    if ma.auth.method == "password":
        try:
            iam_endpoint(ma.auth, ma.region)
        except ConfigError as exc:
            return exc.problems
    return []


def substitute_env(value: Any, environ: Mapping[str, str]) -> Any:
    """Replace ``${env:NAME}`` / ``${env:NAME:-default}`` in every string, as the Collector does."""
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            found = environ.get(name)
            return found if found not in (None, "") else (default or "")

        return _ENV_REF.sub(repl, value)
    if isinstance(value, dict):
        return {k: substitute_env(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, environ) for v in value]
    return value


def _apply_env_fallbacks(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    modelarts = raw.get("modelarts")
    if not isinstance(modelarts, dict):
        return
    if not modelarts.get("project_id") and environ.get(ENV_PROJECT_ID):
        modelarts["project_id"] = environ[ENV_PROJECT_ID]
    auth = modelarts.get("auth")
    if auth is None:
        auth = modelarts["auth"] = {}
    if not isinstance(auth, dict):
        return
    if any(auth.get(k) for k in ("token", "username", "password")):
        return
    for key, env in (("ak", ENV_AK), ("sk", ENV_SK), ("security_token", ENV_SECURITY_TOKEN)):
        if not auth.get(key) and environ.get(env):
            auth[key] = environ[env]
    for key in ("ak", "sk", "security_token"):
        if key in auth and auth[key] in ("", None):
            del auth[key]


def format_loc(loc: tuple[int | str, ...]) -> str:
    """``('sources', 'x', 'jobs', 0, 'id')`` -> ``sources.x.jobs[0].id``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _model_at(model: type[BaseModel], path: tuple[int | str, ...]) -> type[BaseModel] | None:
    """Find the model class that sits at ``path`` inside ``model``, for "did you mean" hints."""
    current: Any = model
    for part in path:
        if isinstance(current, type) and issubclass(current, BaseModel):
            if not isinstance(part, str) or part not in current.model_fields:
                return None
            current = current.model_fields[part].annotation
        else:
            args = [a for a in typing.get_args(current) if a is not type(None)]
            origin = typing.get_origin(current)
            if origin in (list, dict) and args:
                current = args[-1]
            elif origin in (Union, types.UnionType) and args:
                current = args[0]
            else:
                return None
        while typing.get_origin(current) in (Union, types.UnionType):
            current = next(a for a in typing.get_args(current) if a is not type(None))
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f" (valid keys: {', '.join(sorted(choices))})"


def _problems(err: ValidationError, model: type[BaseModel], prefix: tuple[int | str, ...] = ()) -> list[str]:
    problems = []
    for item in err.errors(include_input=False, include_url=False):
        loc = tuple(item["loc"])
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            hint = _did_you_mean(str(loc[-1]), list(parent.model_fields)) if parent else ""
            msg = f"unknown key{hint}"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        msg = msg[:1].lower() + msg[1:]
        problems.append(f"{format_loc(prefix + loc)}: {msg}")
    return problems


def parse_config(
    raw: Any,
    registry: Mapping[str, RegisteredSource],
    *,
    environ: Mapping[str, str] | None = None,
    source_name: str = "config",
) -> Config:
    """Validate a parsed YAML document; raise :class:`ConfigError` listing every problem."""
    environ = os.environ if environ is None else environ
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): expected a mapping of keys such as modelarts, sources, exporter"], source_name)
    raw = substitute_env(raw, environ)
    _apply_env_fallbacks(raw, environ)
    problems: list[str] = []
    config: Config | None = None
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        problems.extend(_problems(err, Config))
    else:
        problems.extend(_cross_field_problems(config))

    validated_sources: dict[str, SourceConfig] = {}
    raw_sources = raw.get("sources") or {}
    if isinstance(raw_sources, dict):
        for name, section in raw_sources.items():
            registered = registry.get(name)
            if registered is None:
                problems.append(f"sources.{name}: unknown source{_did_you_mean(str(name), list(registry))}")
                continue
            model = registered.cls.config_model
            try:
                validated_sources[name] = model.model_validate(section or {})
            except ValidationError as err:
                problems.extend(_problems(err, model, ("sources", name)))
    if problems or config is None:
        raise ConfigError(problems, source_name)
    config.sources = {name: cfg for name, cfg in validated_sources.items() if cfg.enabled}
    return config


def parse_source_config(name: str, model: type[SourceConfig], raw: Mapping[str, Any]) -> SourceConfig:
    """One source's section, validated as ``sources.<name>`` in a file would be."""
    try:
        return model.model_validate(dict(raw))
    except ValidationError as err:
        raise ConfigError(_problems(err, model, ("sources", name))) from None


def load_config(
    path: str | Path,
    registry: Mapping[str, RegisteredSource],
    *,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror or exc}"], str(path)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"{where}{problem}"], str(path)) from None
    return parse_config(raw, registry, environ=environ, source_name=str(path))
