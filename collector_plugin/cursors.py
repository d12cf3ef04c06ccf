"""A cursor codec: versioned, compact JSON, and one error for anything unreadable.

A cursor is opaque to everything but the source that wrote it. Sources keep a small dict,
this codec adds the version and turns a cursor they cannot read into :class:`BadCursor`
naming the source and what is wrong (never the cursor's content: it may hold log text).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from collector_plugin.source import BadCursor


@dataclass(frozen=True)
class CursorCodec:
    """Encodes and decodes one source's cursors; ``version`` is written as ``"v"``."""

    source: str
    version: int = 1

    def dumps(self, data: dict[str, Any]) -> str:
        return json.dumps({"v": self.version, **data}, separators=(",", ":"))

    def loads(self, text: str) -> dict[str, Any]:
        """The cursor's fields; :class:`BadCursor` for anything this codec did not write."""
        try:
            data = json.loads(text)
        except (ValueError, TypeError):
            raise BadCursor(f"{self.source}: unreadable cursor (not JSON)") from None
        if not isinstance(data, dict):
            raise BadCursor(f"{self.source}: unreadable cursor (not an object)")
        version = data.pop("v", self.version)
        if not isinstance(version, int) or version > self.version:
            raise BadCursor(f"{self.source}: cursor version {version!r} is newer than this receiver reads")
        return data

    def fail(self, why: str) -> BadCursor:
        """The error for a cursor whose fields are wrong (``why`` names the field)."""
        return BadCursor(f"{self.source}: unreadable cursor ({why})")


__all__ = ["CursorCodec"]
