"""What every API family of the simulator speaks: a parsed request, a reply, and error builders.

The families (``signing``, ``training``, ``obs``, ``events``, ``services``) know nothing of HTTP
plumbing: they take a :class:`Request` and give a :class:`Reply`, which ``server`` sends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True)
class RequestLog:
    """One request the simulator answered; ``endpoint`` is its path template, ``nbytes`` its answer's body size."""

    method: str
    path: str
    query: dict[str, str]
    status: int
    endpoint: str
    nbytes: int = 0


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json;charset=UTF-8"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    raw_path: str
    raw_query: str
    query: dict[str, str]
    headers: httpx.Headers
    body: bytes
    params: dict[str, str]


class BadRequest(Exception):
    """A request parameter breaks a documented limit; the handler answers 400."""


Handler = Callable[[Request], Reply]


@dataclass(frozen=True)
class Route:
    """``api`` routes are authenticated, project-checked and flow-controlled; IAM and OBS are not."""

    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler
    api: bool = True


def route(method: str, template: str, handler: Handler, *, api: bool = True) -> Route:
    return Route(method, template, compile_template(template), handler, api)


def compile_template(template: str) -> re.Pattern[str]:
    """``{name}`` matches one path segment; ``{object}`` (an OBS key) matches the rest."""
    pattern = re.escape(template).replace(r"\{object\}", "(?P<object>.+)")
    pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", pattern)
    return re.compile(f"^{pattern}$")


def json_reply(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(obj, ensure_ascii=False).encode(), headers=headers or {})


def error_reply(status: int, code: str, msg: str, *, v1: bool = False) -> Reply:
    body: dict[str, Any] = {"error_code": code, "error_msg": msg}
    if v1:
        body = {"is_success": False, **body}
    return json_reply(body, status)


def int_param(query: dict[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None


ALL_QUIRKS = frozenset(
    {
        "v1_count_field",
        "v1_strings",
        "preview_context",
        "events_page_offset",
        "events_k8s_lower",
        "events_strings",
        "service_strings",
    }
)
# The documentation's own examples: v1 counts as strings under "count", one "K8s" event source,
# service update_time and weight as strings. Preview uses "content" (servers since 2022-03-01).
DEFAULT_QUIRKS = frozenset({"v1_count_field", "v1_strings", "events_k8s_lower", "service_strings"})
PREVIEW_CAP = 5 * 1024 * 1024


@dataclass
class ApiOptions:
    """How the ModelArts families answer; one shared instance, changeable while the server runs.

    ``quirks`` picks which documented inconsistencies the answers show (see ``ALL_QUIRKS``).
    """

    quirks: set[str]
    preview_cap: int = PREVIEW_CAP
    v1_split: str = "drop"

    def __post_init__(self) -> None:
        if self.v1_split not in ("drop", "replace"):
            raise ValueError("v1_split must be 'drop' or 'replace'")
        unknown = self.quirks - ALL_QUIRKS
        if unknown:
            raise ValueError(f"unknown quirks: {sorted(unknown)}")

    def has(self, quirk: str) -> bool:
        return quirk in self.quirks
