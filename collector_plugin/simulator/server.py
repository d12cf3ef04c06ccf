"""The simulator: routes each request (parsed by ``httpd``) to the API family that owns it.

The families each own one part of the API and meet the shared state only through
:class:`Scenario`'s public methods: ``signing`` (AK/SK, tokens, IAM login), ``gateway`` (flow
control), ``training`` (jobs, v1 logs, preview, logs/url), ``obs`` (signed links and objects),
``events`` and ``services``. Each handler enforces the limits the API documents (and that real
servers enforce), so a receiver that passes against the simulator does not trip over them in
production. Shapes follow the documentation's examples, including where they disagree with its
own tables (see ``quirks``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar, cast, overload
from urllib.parse import unquote

from collector_plugin.simulator.events import EVENTS, EVENTS_MAX_LIMIT, EventsApi, iso_time
from collector_plugin.simulator.faults import FaultInjector
from collector_plugin.simulator.gateway import CallCount, FlowLimit, Gateway
from collector_plugin.simulator.growth import Growth
from collector_plugin.simulator.httpd import UNKNOWN, RequestHandler, SimulatorServer
from collector_plugin.simulator.obs import OBS_AK, OBS_BUCKET, OBS_OBJECT, ObsStore, obs_error, parse_range
from collector_plugin.simulator.protocol import (
    ALL_QUIRKS,
    DEFAULT_QUIRKS,
    PREVIEW_CAP,
    ApiOptions,
    BadRequest,
    Reply,
    Request,
    RequestLog,
    Route,
    error_reply,
    json_reply,
)
from collector_plugin.simulator.scenario import Scenario
from collector_plugin.simulator.services import SERVICE_LOGS, SERVICES, ServicesApi
from collector_plugin.simulator.signing import (
    DEFAULT_AK,
    DEFAULT_DOMAIN,
    DEFAULT_PASSWORD,
    DEFAULT_SK,
    DEFAULT_USERNAME,
    IAM_TOKENS,
    Authenticator,
    IamLogin,
    caller,
)
from collector_plugin.simulator.training import (
    JOB_DETAILS,
    JOB_SEARCHES,
    OBS_URL,
    PREVIEW,
    SEARCH_MAX_LIMIT,
    V1_FILE_NAMES,
    V1_LOG,
    V1_MAX_OFFSET,
    V1_TEMPLATES,
    TrainingApi,
    decode_range,
    job_details,
    split_edges,
)

__all__ = [  # the names this module offered before the split, still importable from here
    "ALL_QUIRKS",
    "DEFAULT_AK",
    "DEFAULT_DOMAIN",
    "DEFAULT_PASSWORD",
    "DEFAULT_QUIRKS",
    "DEFAULT_SK",
    "DEFAULT_USERNAME",
    "EVENTS",
    "EVENTS_MAX_LIMIT",
    "IAM_TOKENS",
    "JOB_DETAILS",
    "JOB_SEARCHES",
    "OBS_AK",
    "OBS_BUCKET",
    "OBS_OBJECT",
    "OBS_URL",
    "PREVIEW",
    "PREVIEW_CAP",
    "SEARCH_MAX_LIMIT",
    "SERVICES",
    "SERVICE_LOGS",
    "UNKNOWN",
    "V1_FILE_NAMES",
    "V1_LOG",
    "V1_MAX_OFFSET",
    "BadRequest",
    "CallCount",
    "FlowLimit",
    "Reply",
    "Request",
    "RequestLog",
    "Route",
    "Simulator",
    "decode_range",
    "error_reply",
    "iso_time",
    "job_details",
    "json_reply",
    "obs_error",
    "parse_range",
    "split_edges",
]

T = TypeVar("T")


class _Delegate(Generic[T]):
    """A setting of the simulator kept by one of its parts (``sim.sk`` is ``sim.auth.sk``)."""

    def __init__(self, part: str, name: str | None = None) -> None:
        self.part = part
        self.name = name or ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = self.name or name

    @overload
    def __get__(self, obj: None, owner: type) -> _Delegate[T]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> T: ...
    def __get__(self, obj: object | None, owner: type) -> T | _Delegate[T]:
        if obj is None:
            return self
        return cast(T, getattr(getattr(obj, self.part), self.name))

    def __set__(self, obj: object, value: T) -> None:
        setattr(getattr(obj, self.part), self.name, value)


class Simulator:
    """A fake ModelArts (plus IAM and OBS) on 127.0.0.1, for tests, the demo and benchmarks.

    ``quirks`` picks which documented inconsistencies the answers show (see ``ALL_QUIRKS``);
    ``clock`` drives OBS link and IAM token expiry and flow-control windows, so tests can move
    time without sleeping. ``flow_limit`` (a :class:`FlowLimit` or ``"10/s"``, ``"600/min"``)
    turns on APIG flow control per credential; ``obs_lag`` makes OBS objects hold a task's log as
    it was that many seconds ago (by the scenario's clock, which should be the same one).
    """

    ak = _Delegate[str]("auth")
    sk = _Delegate[str]("auth")
    security_token = _Delegate[str | None]("auth")
    token = _Delegate[str | None]("auth")
    require_auth = _Delegate[bool]("auth")
    username = _Delegate[str]("auth")
    password = _Delegate[str]("auth")
    domain_name = _Delegate[str]("auth")
    token_ttl = _Delegate[float]("auth")
    preview_cap = _Delegate[int]("options")
    v1_split = _Delegate[str]("options")
    obs_ttl = _Delegate[float]("obs", "ttl")
    obs_lag = _Delegate[float]("obs", "lag")
    flow_limit = _Delegate[FlowLimit | None]("gateway", "limit")

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ak: str = DEFAULT_AK,
        sk: str = DEFAULT_SK,
        security_token: str | None = None,
        token: str | None = None,
        require_auth: bool = True,
        obs_ttl: float = 300.0,
        obs_lag: float = 0.0,
        preview_cap: int = PREVIEW_CAP,
        v1_split: str = "drop",
        quirks: Iterable[str] | None = None,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        domain_name: str = DEFAULT_DOMAIN,
        token_ttl: float = 86400.0,
        flow_limit: FlowLimit | str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.scenario = scenario if scenario is not None else Scenario()
        self.host = host
        self.port = port
        self.clock = clock
        self.options = ApiOptions(set(DEFAULT_QUIRKS if quirks is None else quirks), preview_cap, v1_split)
        self.auth = Authenticator(
            ak=ak,
            sk=sk,
            security_token=security_token,
            token=token,
            require_auth=require_auth,
            username=username,
            password=password,
            domain_name=domain_name,
            token_ttl=token_ttl,
            clock=self._now,
        )
        self.obs = ObsStore(self.scenario, ttl=obs_ttl, lag=obs_lag, clock=self._now)
        limit = FlowLimit.parse(flow_limit) if isinstance(flow_limit, str) else flow_limit
        self.gateway = Gateway(limit, clock=self._now)
        self.faults = FaultInjector()
        self.routes: tuple[Route, ...] = (
            *IamLogin(self.auth, lambda: self.project_id, lambda: self.issue_token()).routes(),
            *self.obs.routes(),
            *TrainingApi(self.scenario, self.options, lambda job, task: self.obs_url(job, task)).routes(),
            *EventsApi(self.scenario, self.options).routes(),
            *ServicesApi(self.scenario, self.options).routes(),
        )
        self._requests: list[RequestLog] = []
        self._lock = threading.Lock()
        self._server: SimulatorServer | None = None
        self._thread: threading.Thread | None = None
        self._growth: Growth | None = None

    def _now(self) -> float:
        return self.clock()

    @property
    def quirks(self) -> set[str]:
        return self.options.quirks

    @quirks.setter
    def quirks(self, value: Iterable[str]) -> None:
        self.options.quirks = set(value)

    # lifecycle

    @property
    def project_id(self) -> str:
        return self.scenario.project_id

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the simulator is not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> Simulator:
        if self._server is not None:
            return self
        server = SimulatorServer((self.host, self.port), RequestHandler)
        server.sim = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="modelarts-simulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_growth()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # growth

    def start_growth(
        self,
        bytes_per_second: int,
        *,
        interval: float = 0.25,
        event_interval: float = 5.0,
        update_interval: float = 30.0,
        seed: int = 1,
    ) -> None:
        """Append realistic lines to every running task and v1 file, add events, cycle updates."""
        self.stop_growth()
        self._growth = Growth(self.scenario, bytes_per_second, interval, event_interval, update_interval, seed)
        self._growth.start()

    def stop_growth(self) -> None:
        growth, self._growth = self._growth, None
        if growth is not None:
            growth.stop()

    # request log and call counts

    @property
    def requests(self) -> list[RequestLog]:
        with self._lock:
            return list(self._requests)

    def reset_requests(self) -> None:
        """Forget the request log and the per-endpoint call counts (flow-control windows stay)."""
        with self._lock:
            self._requests.clear()
        self.gateway.reset_counts()

    def count(self, endpoint: str | None = None, *, status: int | None = None) -> int:
        """Requests seen for ``endpoint`` (a path template), optionally with a given status."""
        with self._lock:
            return sum(
                1
                for r in self._requests
                if (endpoint is None or r.endpoint == endpoint) and (status is None or r.status == status)
            )

    def calls(self, endpoint: str) -> CallCount:
        """Authenticated calls to ``endpoint`` (a path template) served, and refused by flow control.

        Counts since the start or the last :meth:`reset_requests`; fault-injected answers are not
        calls the gateway saw.
        """
        return self.gateway.counts().get(endpoint, CallCount())

    def call_counts(self) -> dict[str, CallCount]:
        """:meth:`calls` for every endpoint called so far."""
        return self.gateway.counts()

    def record(self, entry: RequestLog) -> None:
        with self._lock:
            self._requests.append(entry)

    # auth and OBS links

    def issue_token(self) -> str:
        """A fresh IAM token, as a password login would return."""
        return self.auth.issue_token()

    def authenticate(self, req: Request) -> Reply | None:
        """None when the request is authenticated, else the 401 to send."""
        return self.auth.authenticate(req)

    def obs_url(self, job_id: str, task: str) -> str:
        """A temporary link to a task's log, valid for ``obs_ttl`` seconds."""
        return self.obs.url(self.url, job_id, task)

    # dispatch

    def find_route(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for route in self.routes:
            m = route.pattern.match(path)
            if m and route.method == method:
                return route, {k: unquote(v) for k, v in m.groupdict().items()}
        return None

    def handle(self, req: Request, route: Route) -> Reply:
        if not route.api:
            self.gateway.pass_through(route.template)
            return route.handler(req)
        denied = self.authenticate(req)
        if denied is not None:
            return denied
        if req.params.get("project_id", self.project_id) != self.project_id:
            return error_reply(403, "ModelArts.0004", "The project ID does not match the credentials.")
        refused = self.gateway.admit(caller(req), route.template)
        if refused is not None:
            return refused
        try:
            return route.handler(req)
        except BadRequest as err:
            v1 = route.template in V1_TEMPLATES
            code = "ModelArts.0105" if v1 else "ModelArts.50004000"
            return error_reply(400, code, f"Bad request. {err}", v1=v1)
