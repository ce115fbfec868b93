"""Errors: the Agents SDK's exception names for failed runs, and the server's error codes.

A run that fails on the server (``run.failed``) raises, after the stream's events, the SDK
exception of the same name (``MaxTurnsExceeded``, ``ModelBehaviorError``, ...), so
``except MaxTurnsExceeded`` works as with the SDK. A request the server refuses raises
``CallboardError`` with its code (``unknown_agent``, ``session_busy``, ``overloaded``, ...);
a missing or wrong key raises ``AuthenticationError``.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

__all__ = [
    "CallboardError",
    "AuthenticationError",
    "ConnectionLost",
    "AgentsException",
    "MaxTurnsExceeded",
    "ModelBehaviorError",
    "UserError",
    "InputGuardrailTripwireTriggered",
    "OutputGuardrailTripwireTriggered",
    "ToolTimeoutError",
    "ModelTimeoutError",
    "run_error",
]


class CallboardError(Exception):
    """The server refused a request: ``code`` is PROTOCOL.md's error code."""

    def __init__(self, code: str, message: str, oldest_seq: Optional[int] = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.oldest_seq = oldest_seq


class AuthenticationError(CallboardError):
    """No API key, or one the server does not know (HTTP 401 before the WebSocket upgrade)."""


class ConnectionLost(CallboardError):
    """The connection dropped and could not be re-established in time."""


class AgentsException(Exception):
    """Base of the SDK's run errors."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MaxTurnsExceeded(AgentsException):
    pass


class ModelBehaviorError(AgentsException):
    pass


class UserError(AgentsException):
    pass


class InputGuardrailTripwireTriggered(AgentsException):
    pass


class OutputGuardrailTripwireTriggered(AgentsException):
    pass


class ToolTimeoutError(AgentsException):
    pass


class ModelTimeoutError(AgentsException):
    pass


_RUN_ERRORS: Dict[str, Type[AgentsException]] = {
    c.__name__: c
    for c in (
        AgentsException,
        MaxTurnsExceeded,
        ModelBehaviorError,
        UserError,
        InputGuardrailTripwireTriggered,
        OutputGuardrailTripwireTriggered,
        ToolTimeoutError,
        ModelTimeoutError,
    )
}


def run_error(error_type: str, message: str) -> AgentsException:
    """The exception for a ``run.failed`` frame's ``error``."""
    cls = _RUN_ERRORS.get(error_type)
    if cls is None:
        # An exception the SDK has and this module does not name: keep its name visible.
        cls = type(error_type or "AgentsException", (AgentsException,), {})
    return cls(message)
