"""The receiver's own logs: JSON lines in containers, readable text on a TTY, secrets redacted.

Redaction happens in a handler filter, so every record that reaches our handler (the receiver's
own, httpx's, a plugin's) is cleaned before any formatter sees it: registered secret values
(:func:`register_secret`), the query string of any URL that carries a signature-like parameter
(a signed OBS link, a token) and the value of credential headers (``Authorization``,
``X-Auth-Token``...) are replaced in the message, its arguments, extra fields and exception text. The formatters redact what they print once more, as a last guard.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import traceback
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import IO, Any, Literal

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 4
"""Shorter values are not registered: redacting "ab" everywhere would garble every log line."""

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
NOISY_LOGGERS = ("httpx", "httpcore", "grpc", "hpack")
"""Libraries that log every request (signed URLs, raw auth headers) at INFO/DEBUG: kept at WARNING always."""

_SENSITIVE_PARAM = re.compile(
    r"(?:^|[&;])(?:"
    r"signature|sig|x-amz-[\w.-]*|x-obs-[\w.-]*|x-goog-[\w.-]*|awsaccesskeyid|accesskeyid|"
    r"[\w.-]*token|expires|policy|key-pair-id|credential|sk|secret[\w.-]*|password|passwd"
    r")=",
    re.IGNORECASE,
)
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}
"""Valid raw in JSON, but line breaks to many log shippers: escape them so one record is one line."""
_CREDENTIAL_HEADER = re.compile(
    r"(?i)\b(authorization|proxy-authorization|x-auth-token|x-subject-token|x-security-token)"
    r"(['\"]?\s*[:=]\s*['\"]?)(?:(bearer|basic|token)\s+)?([^\s'\",;}]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{12,}")
_QUERY = re.compile(r"\?([^\s\"'<>#`]+)")

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secret_pattern: re.Pattern[str] | None = None

_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def register_secret(value: str | None) -> None:
    """Never let ``value`` appear in a log line (SK, tokens, passwords: call this as you load them)."""
    global _secret_pattern
    if not value or len(value) < MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        if value in _secrets:
            return
        _secrets.add(value)
        _secret_pattern = _compile(_secrets)


def clear_secrets() -> None:
    """Forget every registered secret (for tests)."""
    global _secret_pattern
    with _secrets_lock:
        _secrets.clear()
        _secret_pattern = None


def _compile(values: Iterable[str]) -> re.Pattern[str]:
    ordered = sorted(values, key=len, reverse=True)
    return re.compile("|".join(re.escape(v) for v in ordered))


def _redact_query(match: re.Match[str]) -> str:
    return "?" + REDACTED if _SENSITIVE_PARAM.search(match.group(1)) else match.group(0)


def redact(text: str) -> str:
    """Remove registered secrets, signed URL query strings and credential headers from ``text``."""
    pattern = _secret_pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    if "?" in text:
        text = _QUERY.sub(_redact_query, text)
    text = _CREDENTIAL_HEADER.sub(_redact_header, text)
    return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


def _redact_header(match: re.Match[str]) -> str:
    scheme = f"{match.group(3)} " if match.group(3) else ""
    return f"{match.group(1)}{match.group(2)}{scheme}{REDACTED}"


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(v) for v in value]
    return redact(str(value))


class RedactingFilter(logging.Filter):
    """Rewrites each record in place so no handler or formatter sees a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!s} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key in extra_fields(record):
            setattr(record, key, _redact_value(record.__dict__[key]))
        return True


def extra_fields(record: logging.LogRecord) -> list[str]:
    """Names passed through ``extra=`` (everything that is not a standard LogRecord attribute)."""
    return [k for k in record.__dict__ if k not in _STANDARD_ATTRS and not k.startswith("_")]


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key in extra_fields(record):
            if key not in entry:
                entry[key] = _redact_value(record.__dict__[key])
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(record.stack_info)
        # Redacting the serialized line could cut through an escape sequence: fields are done above.
        return json.dumps(entry, ensure_ascii=False, default=str).translate(_LINE_BREAKS)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = " ".join(f"{k}={_redact_value(record.__dict__[k])}" for k in extra_fields(record))
        if extras:
            line += " " + extras
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + record.stack_info
        return redact(line)


class _ReceiverHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler :func:`setup_logging` installed, so a second call replaces it."""


def resolve_format(fmt: Literal["auto", "json", "text"], stream: IO[str]) -> Literal["json", "text"]:
    """``auto`` means JSON unless ``stream`` is a terminal."""
    if fmt == "auto":
        isatty = getattr(stream, "isatty", None)
        return "text" if callable(isatty) and isatty() else "json"
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be auto, json or text, not {fmt!r}")
    return fmt


def setup_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "text"] = "auto",
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send every log record to ``stream`` (stderr by default), formatted and redacted.

    Installs one handler first on the root logger, replacing the one a previous call installed,
    and returns it.
    """
    try:
        numeric = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}") from None
    target = stream if stream is not None else sys.stderr
    handler = _ReceiverHandler(target)
    handler.setFormatter(JsonFormatter() if resolve_format(fmt, target) == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ReceiverHandler)]:
        root.removeHandler(old)
    root.handlers.insert(0, handler)  # first, so handlers added by others see redacted records too
    root.setLevel(numeric)
    logging.captureWarnings(False)  # re-hook, in case something replaced showwarning since
    logging.captureWarnings(True)  # warnings become structured, redacted records too
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler
