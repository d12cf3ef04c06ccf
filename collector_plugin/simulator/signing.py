"""Who may call the API: AK/SK signatures, IAM password login and the tokens it hands out."""

from __future__ import annotations

import hmac
import json
import re
import secrets
import threading
from collections.abc import Callable
from datetime import datetime, timezone

from collector_plugin.errors import AuthError
from collector_plugin.simulator.protocol import Reply, Request, Route, error_reply, json_reply, route

DEFAULT_AK = "SIMULATORAK0000000001"
DEFAULT_SK = "SimulatorSecretKey0000000000000000000001"
DEFAULT_USERNAME = "sim-user"
DEFAULT_PASSWORD = "sim-password"
DEFAULT_DOMAIN = "sim-domain"
IAM_TOKENS = "/v3/auth/tokens"
ANONYMOUS = "anonymous"

_CREDENTIAL = re.compile(r"Access=([^,\s]+)")


def caller(req: Request) -> str:
    """The credential a request is counted against: its AK, its IAM token, or ``anonymous``.

    Only a key to count by, never logged or returned.
    """
    found = _CREDENTIAL.search(req.headers.get("authorization", ""))
    if found:
        return found.group(1)
    return req.headers.get("x-auth-token") or ANONYMOUS


def auth_failed(reason: str) -> Reply:
    return error_reply(401, "APIG.0301", f"Incorrect IAM authentication information: {reason}")


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000000Z")


class Authenticator:
    """Checks a request's credentials and runs IAM password login.

    Settings are plain attributes, so a test can change them while the simulator runs.
    """

    def __init__(
        self,
        *,
        ak: str,
        sk: str,
        security_token: str | None,
        token: str | None,
        require_auth: bool,
        username: str,
        password: str,
        domain_name: str,
        token_ttl: float,
        clock: Callable[[], float],
    ) -> None:
        self.ak = ak
        self.sk = sk
        self.security_token = security_token
        self.token = token
        self.require_auth = require_auth
        self.username = username
        self.password = password
        self.domain_name = domain_name
        self.token_ttl = token_ttl
        self.clock = clock
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()

    def issue_token(self) -> str:
        """A fresh IAM token, as a password login would return."""
        value = "MIIsim-" + secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[value] = self.clock() + self.token_ttl
        return value

    def token_expiry(self, value: str) -> float | None:
        """When an issued token expires (clock seconds); None for a token never issued."""
        with self._lock:
            return self._tokens.get(value)

    def _token_ok(self, value: str) -> bool:
        if self.token is not None and hmac.compare_digest(value, self.token):
            return True
        expires = self.token_expiry(value)
        return expires is not None and self.clock() < expires

    def _secret_for(self, ak: str) -> str | None:
        return self.sk if ak == self.ak else None

    def authenticate(self, req: Request) -> Reply | None:
        """None when the request is authenticated, else the 401 to send."""
        if not self.require_auth:
            return None
        token = req.headers.get("x-auth-token")
        if token is not None:
            return None if self._token_ok(token) else auth_failed("the token is invalid or has expired")
        if "authorization" not in req.headers:
            return auth_failed("no Authorization header and no X-Auth-Token")
        from collector_plugin.auth import verify_signature

        try:
            verify_signature(req.method, req.raw_path, req.raw_query, req.headers, req.body, self._secret_for)
        except AuthError as err:
            return auth_failed(str(err))
        if self.security_token is not None:
            sent = req.headers.get("x-security-token", "")
            if not hmac.compare_digest(sent, self.security_token):
                return auth_failed("the security token is missing or wrong")
        return None

    def password_ok(self, body: bytes) -> bool:
        """True when an IAM login body names this simulator's user, password and domain."""
        try:
            identity = json.loads(body or b"{}")["auth"]["identity"]
            user = identity["password"]["user"]
            return bool(
                "password" in identity.get("methods", [])
                and user.get("name") == self.username
                and hmac.compare_digest(str(user.get("password", "")), self.password)
                and user.get("domain", {}).get("name") == self.domain_name
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return False


class IamLogin:
    """``POST /v3/auth/tokens``: password login, answered with ``X-Subject-Token``.

    ``issue`` mints the token; it is the simulator's own (replaceable) issuer, so a test can see
    every token handed out.
    """

    def __init__(self, auth: Authenticator, project_id: Callable[[], str], issue: Callable[[], str]) -> None:
        self.auth = auth
        self.project_id = project_id
        self.issue = issue

    def routes(self) -> list[Route]:
        return [route("POST", IAM_TOKENS, self.login, api=False)]

    def login(self, req: Request) -> Reply:
        auth = self.auth
        if not auth.password_ok(req.body):
            err = {"error": {"code": 401, "message": "The username or password is wrong.", "title": "Unauthorized"}}
            return json_reply(err, 401)
        token = self.issue()
        expires = auth.token_expiry(token)
        payload = {
            "token": {
                "expires_at": _stamp(expires if expires is not None else auth.clock() + auth.token_ttl),
                "issued_at": _stamp(auth.clock()),
                "methods": ["password"],
                "project": {"id": self.project_id(), "name": "cn-north-4"},
                "user": {"name": auth.username, "domain": {"name": auth.domain_name}},
            }
        }
        return json_reply(payload, 201, headers={"X-Subject-Token": token})
