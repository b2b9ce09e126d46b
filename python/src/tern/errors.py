"""Exceptions: every one derives from :class:`TernError`.

A refusal from the daemon is an :class:`ApiError` (or one of its subclasses, by the local
API's error code) and carries the daemon's ``code``, ``message`` and ``hint``.
"""

from __future__ import annotations


class TernError(Exception):
    """Base class of every error this package raises."""


class DaemonNotRunningError(TernError):
    """No ternd answers at the socket tried."""

    def __init__(self, socket: str, home: str) -> None:
        super().__init__(
            f"no ternd answers at {socket}: start one with `ternd --home {home}` "
            "(or point TERN_HOME / home= at the home of one that runs)"
        )
        self.socket = socket
        self.home = home


class ProtocolError(TernError):
    """The daemon sent something that is not a local API frame."""


class ApiError(TernError):
    """The daemon refused a request."""

    def __init__(self, code: str, message: str, hint: str | None = None) -> None:
        text = f"{code}: {message}" + (f" ({hint})" if hint else "")
        super().__init__(text)
        self.code = code
        self.message = message
        self.hint = hint


class BadAddressError(ApiError):
    """The target is neither a valid address nor a valid name."""


class NotFoundError(ApiError):
    """No record, alias or pending request for the target."""


class PinMismatchError(ApiError):
    """A name resolved to another key than the one pinned for it."""


class NameTakenError(ApiError):
    """Another key holds the name."""


class UnreachableError(ApiError):
    """The peer could not be reached."""


class RefusedError(ApiError):
    """The peer refused: not trusted, no listener, or busy."""


class NotDeliveredError(ApiError):
    """A trust request or answer could not be delivered."""


class StillRunningError(ApiError):
    """The stream has not ended yet (``outcome``)."""


class BadRequestError(ApiError):
    """The daemon did not understand the request."""


_BY_CODE: dict[str, type[ApiError]] = {
    "bad_address": BadAddressError,
    "bad_request": BadRequestError,
    "bad_port": BadRequestError,
    "not_found": NotFoundError,
    "pin_mismatch": PinMismatchError,
    "name_taken": NameTakenError,
    "unreachable": UnreachableError,
    "refused": RefusedError,
    "not_delivered": NotDeliveredError,
    "still_running": StillRunningError,
}


def api_error(code: str, message: str, hint: str | None) -> ApiError:
    """The exception for a daemon's error ``code``."""
    return _BY_CODE.get(code, ApiError)(code, message, hint)
