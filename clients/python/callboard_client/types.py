"""The Responses-API types that stream events carry.

Where the ``openai`` package is installed these are openai's own classes, so code written for
the Agents SDK (``isinstance(event.data, ResponseTextDeltaEvent)``) works unchanged. Without
it, small stand-ins of the same names and attributes take their place; import them from here
(``from callboard_client.types import ResponseTextDeltaEvent``) and the check works either way.
"""

from __future__ import annotations

import typing
from typing import Any, Dict, Optional, Type

__all__ = [
    "USING_OPENAI",
    "Obj",
    "raw_event",
    "function_call",
    "output_message",
    "reasoning_item",
    "ResponseTextDeltaEvent",
    "ResponseTextDoneEvent",
    "ResponseCreatedEvent",
    "ResponseInProgressEvent",
    "ResponseCompletedEvent",
    "ResponseFailedEvent",
    "ResponseIncompleteEvent",
    "ResponseErrorEvent",
    "ResponseOutputItemAddedEvent",
    "ResponseOutputItemDoneEvent",
    "ResponseContentPartAddedEvent",
    "ResponseContentPartDoneEvent",
    "ResponseFunctionCallArgumentsDeltaEvent",
    "ResponseFunctionCallArgumentsDoneEvent",
    "ResponseRefusalDeltaEvent",
    "ResponseRefusalDoneEvent",
    "ResponseFunctionToolCall",
    "ResponseOutputMessage",
    "ResponseOutputText",
    "ResponseReasoningItem",
]


class Obj:
    """A JSON object with attribute access (``o.delta``) and item access (``o["delta"]``).

    Nested objects are ``Obj`` too; ``model_dump()`` gives the JSON back, as pydantic models do.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Optional[Dict[str, Any]] = None, **fields: Any) -> None:
        d = dict(data or {})
        d.update(fields)
        object.__setattr__(self, "_data", d)

    def __getattr__(self, name: str) -> Any:
        try:
            return _wrap(self._data[name])
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__} has no attribute {name!r}"
            ) from None

    def __getitem__(self, name: str) -> Any:
        return _wrap(self._data[name])

    def get(self, name: str, default: Any = None) -> Any:
        return _wrap(self._data.get(name, default))

    def model_dump(self, **_: Any) -> Dict[str, Any]:
        return dict(self._data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Obj) and self._data == other._data

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._data.items())
        return f"{type(self).__name__}({fields})"


def _wrap(v: Any) -> Any:
    if isinstance(v, dict):
        return Obj(v)
    if isinstance(v, list):
        return [_wrap(x) for x in v]
    return v


# Stand-ins: one class per event type, by the openai names.
_FALLBACK_EVENTS: Dict[str, str] = {
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.failed": "ResponseFailedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "error": "ResponseErrorEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.refusal.delta": "ResponseRefusalDeltaEvent",
    "response.refusal.done": "ResponseRefusalDoneEvent",
}
_FALLBACK_ITEMS = [
    "ResponseFunctionToolCall",
    "ResponseOutputMessage",
    "ResponseOutputText",
    "ResponseReasoningItem",
]

_fallback: Dict[str, Type[Obj]] = {
    name: type(name, (Obj,), {"__slots__": ()})
    for name in list(_FALLBACK_EVENTS.values()) + _FALLBACK_ITEMS
}

try:  # pragma: no cover - which branch runs depends on the environment
    from openai.types import responses as _oai  # type: ignore[import-not-found]

    USING_OPENAI = True
except ImportError:  # pragma: no cover
    _oai = None
    USING_OPENAI = False


def _class(name: str, use_openai: bool) -> type:
    if use_openai and _oai is not None and hasattr(_oai, name):
        return getattr(_oai, name)
    return _fallback[name]


ResponseTextDeltaEvent = _class("ResponseTextDeltaEvent", USING_OPENAI)
ResponseTextDoneEvent = _class("ResponseTextDoneEvent", USING_OPENAI)
ResponseCreatedEvent = _class("ResponseCreatedEvent", USING_OPENAI)
ResponseInProgressEvent = _class("ResponseInProgressEvent", USING_OPENAI)
ResponseCompletedEvent = _class("ResponseCompletedEvent", USING_OPENAI)
ResponseFailedEvent = _class("ResponseFailedEvent", USING_OPENAI)
ResponseIncompleteEvent = _class("ResponseIncompleteEvent", USING_OPENAI)
ResponseErrorEvent = _class("ResponseErrorEvent", USING_OPENAI)
ResponseOutputItemAddedEvent = _class("ResponseOutputItemAddedEvent", USING_OPENAI)
ResponseOutputItemDoneEvent = _class("ResponseOutputItemDoneEvent", USING_OPENAI)
ResponseContentPartAddedEvent = _class("ResponseContentPartAddedEvent", USING_OPENAI)
ResponseContentPartDoneEvent = _class("ResponseContentPartDoneEvent", USING_OPENAI)
ResponseFunctionCallArgumentsDeltaEvent = _class(
    "ResponseFunctionCallArgumentsDeltaEvent", USING_OPENAI
)
ResponseFunctionCallArgumentsDoneEvent = _class(
    "ResponseFunctionCallArgumentsDoneEvent", USING_OPENAI
)
ResponseRefusalDeltaEvent = _class("ResponseRefusalDeltaEvent", USING_OPENAI)
ResponseRefusalDoneEvent = _class("ResponseRefusalDoneEvent", USING_OPENAI)
ResponseFunctionToolCall = _class("ResponseFunctionToolCall", USING_OPENAI)
ResponseOutputMessage = _class("ResponseOutputMessage", USING_OPENAI)
ResponseOutputText = _class("ResponseOutputText", USING_OPENAI)
ResponseReasoningItem = _class("ResponseReasoningItem", USING_OPENAI)


def _openai_events() -> Dict[str, type]:
    """openai's stream event classes by their ``type`` string."""
    if _oai is None:
        return {}
    out: Dict[str, type] = {}
    union = typing.get_args(_oai.ResponseStreamEvent)
    members = typing.get_args(union[0]) if union else ()
    for cls in members:
        field = getattr(cls, "model_fields", {}).get("type")
        for lit in typing.get_args(getattr(field, "annotation", None)) or ():
            out[lit] = cls
    return out


_OPENAI_EVENTS = _openai_events()


def _validated(cls: type, data: Dict[str, Any]) -> Any:
    try:
        return cls.model_validate(data)  # type: ignore[attr-defined]
    except Exception:  # a field openai's model does not accept: keep the data
        return None


def raw_event(data: Dict[str, Any], use_openai: bool = USING_OPENAI) -> Any:
    """A ``raw_response_event``'s ``data`` as a typed object (openai's class when possible)."""
    ty = data.get("type", "")
    if use_openai and ty in _OPENAI_EVENTS:
        v = _validated(_OPENAI_EVENTS[ty], data)
        if v is not None:
            return v
    name = _FALLBACK_EVENTS.get(ty)
    return _fallback[name](data) if name else Obj(data)


def _item(name: str, data: Dict[str, Any], use_openai: bool) -> Any:
    if use_openai and _oai is not None:
        v = _validated(getattr(_oai, name), data)
        if v is not None:
            return v
    if name == "ResponseOutputMessage":
        # Content parts get their class too, so ``isinstance(part, ResponseOutputText)`` works.
        data = dict(data)
        parts = []
        for p in data.get("content") or []:
            is_text = isinstance(p, dict) and p.get("type") == "output_text"
            parts.append(_fallback["ResponseOutputText"](p) if is_text else p)
        data["content"] = parts
        return _FallbackMessage(data)
    return _fallback[name](data)


class _FallbackMessage(_fallback["ResponseOutputMessage"]):  # type: ignore[misc, valid-type]
    """The message stand-in keeps its content parts' classes."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name == "content":
            return self._data.get("content", [])
        return super().__getattr__(name)


def function_call(data: Dict[str, Any], use_openai: bool = USING_OPENAI) -> Any:
    """A ``function_call`` item (``ResponseFunctionToolCall``)."""
    return _item("ResponseFunctionToolCall", data, use_openai)


def output_message(data: Dict[str, Any], use_openai: bool = USING_OPENAI) -> Any:
    """An assistant ``message`` item (``ResponseOutputMessage``)."""
    return _item("ResponseOutputMessage", data, use_openai)


def reasoning_item(data: Dict[str, Any], use_openai: bool = USING_OPENAI) -> Any:
    """A ``reasoning`` item (``ResponseReasoningItem``)."""
    return _item("ResponseReasoningItem", data, use_openai)
