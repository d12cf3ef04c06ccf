"""One error hierarchy for the receiver.

    ReceiverError
    ├── ConfigError            bad config file: every problem, each with its key path
    ├── AuthError              credentials rejected or IAM login failed
    ├── ApiError               the ModelArts API answered with an error (status, error_code, endpoint)
    │   └── ObsLinkExpired     a temporary OBS link answered 403: fetch a fresh one
    ├── ResponseFormatError    the API answered something it does not promise (endpoint, field)
    ├── CheckpointError        the checkpoint store cannot be opened, read or written
    │   └── StoreUnavailable   the checkpoint database cannot be reached now (retry: it reconnects)
    ├── PluginError            a plugin failed to import, raised in its hook or clashed with another
    └── ExportError            the collector refused a batch for good (not retried)

Messages never carry secrets: no SK, token, signature or signed OBS URL.
"""

from __future__ import annotations

from collections.abc import Sequence


class ReceiverError(Exception):
    """Base class: a user-facing error whose message says what is wrong and where."""


class ConfigError(ReceiverError):
    """The config is invalid; ``problems`` holds one ``key.path: message`` line per problem."""

    def __init__(self, problems: Sequence[str], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(f"{source}: {len(self.problems)} problem(s)\n  " + "\n  ".join(self.problems))


class AuthError(ReceiverError):
    """Credentials were rejected, or an IAM token could not be obtained."""


class ApiError(ReceiverError):
    """The ModelArts API answered with an error status.

    ``endpoint`` is the request path (never a signed URL); ``retryable`` tells the client's
    retry loop whether trying again may help.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        status: int,
        error_code: str = "",
        error_msg: str = "",
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.status = status
        self.error_code = error_code
        self.error_msg = error_msg
        self.retryable = retryable
        self.retry_after = retry_after
        code = f" {error_code}" if error_code else ""
        msg = f": {error_msg}" if error_msg else ""
        super().__init__(f"{endpoint}: HTTP {status}{code}{msg}")


class ObsLinkExpired(ApiError):
    """A temporary OBS log link is no longer valid (403); ask the API for a fresh one."""


class ResponseFormatError(ReceiverError):
    """The API answered with a body that does not match its documented shape."""

    def __init__(self, endpoint: str, field: str, detail: str) -> None:
        self.endpoint = endpoint
        self.field = field
        self.detail = detail
        where = f" field {field!r}" if field else ""
        super().__init__(f"{endpoint}: unexpected response{where}: {detail}")


class CheckpointError(ReceiverError):
    """The checkpoint store is unreadable, corrupt or not writable."""


class StoreUnavailable(CheckpointError):
    """The checkpoint database is unreachable; the store reconnects on the next call."""


class PluginError(ReceiverError):
    """A plugin could not be loaded; the message says which one, why, and how to get rid of it.

    ``plugin`` is the plugin's name (what ``MODELARTS_RECEIVER_BLOCK_PLUGINS`` takes) and
    ``distribution`` the package that ships it, when known.
    """

    def __init__(self, plugin: str, problem: str, distribution: str = "") -> None:
        self.plugin = plugin
        self.problem = problem
        self.distribution = distribution
        remedy = f"uninstall {distribution} or block it" if distribution else "block it"
        super().__init__(f"plugin {plugin!r}: {problem}; {remedy} with MODELARTS_RECEIVER_BLOCK_PLUGINS={plugin}")


class ExportError(ReceiverError):
    """The collector rejected a batch permanently (for example HTTP 400)."""
