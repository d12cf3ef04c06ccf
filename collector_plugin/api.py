"""The public source API: everything a source plugin imports, ours and a third party's alike.

A source is a class registered through the ``register_sources`` hook::

    from collector_plugin.api import Source, SourceConfig, hookimpl, ...

    @hookimpl
    def register_sources(register):
        register(MySource)

It reads targets through readers that yield :class:`Span` objects (records plus the cursor after
them); the receiver polls, counts, retries, exports, acknowledges and commits. Nothing outside
this module is part of the contract: the built-in ModelArts sources import only this module and
their own package (a test enforces it).
"""

from __future__ import annotations

from collector_plugin.cursors import CursorCodec
from collector_plugin.durations import Duration
from collector_plugin.errors import (
    ApiError,
    AuthError,
    ObsLinkExpired,
    PluginError,
    ReceiverError,
    ResponseFormatError,
)
from collector_plugin.hookspecs import hookimpl
from collector_plugin.http import ApiClient, parse_model
from collector_plugin.journal import LogTimes, ReadJournal
from collector_plugin.lines import Line, LineAssembler, LineSourceConfig
from collector_plugin.links import AnswerBrokeOff, LinkAnswer
from collector_plugin.logs import REDACTED
from collector_plugin.mapping import (
    SEV_DEBUG,
    SEV_ERROR,
    SEV_FATAL,
    SEV_INFO,
    SEV_UNSET,
    SEV_WARN,
    LineMapper,
    LineRecords,
    line_severity,
    record_uid,
)
from collector_plugin.records import EMPTY_ATTRIBUTES, Attributes, AttrValue, Record, RecordRun, Span
from collector_plugin.source import (
    BadCursor,
    Command,
    CommandContext,
    Connection,
    Delivery,
    HttpClientFactory,
    Reader,
    ReaderStatus,
    Source,
    SourceConfig,
    SourceContext,
    SourceMetrics,
    Target,
)

__all__ = [
    "EMPTY_ATTRIBUTES",
    "REDACTED",
    "SEV_DEBUG",
    "SEV_ERROR",
    "SEV_FATAL",
    "SEV_INFO",
    "SEV_UNSET",
    "SEV_WARN",
    "AnswerBrokeOff",
    "ApiClient",
    "ApiError",
    "AttrValue",
    "Attributes",
    "AuthError",
    "BadCursor",
    "Command",
    "CommandContext",
    "Connection",
    "CursorCodec",
    "Delivery",
    "Duration",
    "HttpClientFactory",
    "Line",
    "LineAssembler",
    "LineMapper",
    "LineRecords",
    "LineSourceConfig",
    "LinkAnswer",
    "LogTimes",
    "ObsLinkExpired",
    "PluginError",
    "ReadJournal",
    "Reader",
    "ReaderStatus",
    "ReceiverError",
    "Record",
    "RecordRun",
    "ResponseFormatError",
    "Source",
    "SourceConfig",
    "SourceContext",
    "SourceMetrics",
    "Span",
    "Target",
    "hookimpl",
    "line_severity",
    "parse_model",
    "record_uid",
]
