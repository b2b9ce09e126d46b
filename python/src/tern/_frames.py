"""Local API frames (SPEC.md §10): a big-endian u32 length, then that many bytes of JSON."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from .errors import ApiError, ProtocolError, api_error

MAX_FRAME = 65536


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"a request of {len(body)} bytes is over the {MAX_FRAME}-byte frame limit")
    return struct.pack(">I", len(body)) + body


def body_len(header: bytes) -> int:
    (length,) = struct.unpack(">I", header)
    if length > MAX_FRAME:
        raise ProtocolError(f"the daemon sent a frame of {length} bytes (at most {MAX_FRAME})")
    return int(length)


def decode(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except ValueError as e:
        raise ProtocolError(f"the daemon sent a frame that is not JSON: {e}") from e
    if not isinstance(message, dict):
        raise ProtocolError("the daemon sent a frame that is not a JSON object")
    return message


def answer(response: dict[str, Any]) -> Any:
    """The data of a response, or the exception it stands for."""
    if response.get("ok") is True:
        return response.get("data")
    error = response.get("error") or {}
    raise error_of(error)


def error_of(error: dict[str, Any]) -> ApiError:
    return api_error(
        str(error.get("code", "failed")), str(error.get("message", "")), error.get("hint")
    )


def resolve_home(home: str | os.PathLike[str] | None) -> Path:
    """The home ternctl would use: ``home``, else ``$TERN_HOME``, else ``~/.local/share/tern``."""
    if home is not None:
        return Path(home)
    if os.environ.get("TERN_HOME"):
        return Path(os.environ["TERN_HOME"])
    return Path.home() / ".local" / "share" / "tern"
