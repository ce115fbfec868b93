"""Stream events and run items with the Agents SDK's names, types and attributes.

``event.type`` is ``"raw_response_event"``, ``"run_item_stream_event"`` or
``"agent_updated_stream_event"``; ``event.data`` is a Responses-API event (openai's class when
``openai`` is installed), ``event.item`` a run item whose ``type`` and ``raw_item`` are the
SDK's, ``event.new_agent.name`` the agent that took over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Union

from . import types as t

__all__ = [
    "AgentRef",
    "Usage",
    "RawResponsesStreamEvent",
    "RunItemStreamEvent",
    "AgentUpdatedStreamEvent",
    "StreamEvent",
    "MessageOutputItem",
    "ToolCallItem",
    "ToolCallOutputItem",
    "HandoffCallItem",
    "HandoffOutputItem",
    "ReasoningItem",
    "RunItem",
    "ItemHelpers",
    "stream_event",
]


@dataclass(frozen=True)
class AgentRef:
    """An agent as events name it (the SDK hands the ``Agent``; its ``name`` is what a client
    has)."""

    name: str


@dataclass
class Usage:
    """Token usage, as the SDK's ``Usage`` counts it."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_json(cls, v: Optional[Dict[str, Any]]) -> "Usage":
        v = v or {}
        return cls(
            requests=int(v.get("requests", 0) or 0),
            input_tokens=int(v.get("input_tokens", 0) or 0),
            output_tokens=int(v.get("output_tokens", 0) or 0),
            total_tokens=int(v.get("total_tokens", 0) or 0),
        )

    def add_response(self, usage: Optional[Dict[str, Any]]) -> None:
        """Adds one model response's usage (one request)."""
        u = usage or {}
        self.requests += 1
        self.input_tokens += int(u.get("input_tokens", 0) or 0)
        self.output_tokens += int(u.get("output_tokens", 0) or 0)
        self.total_tokens += int(u.get("total_tokens", 0) or 0)


@dataclass
class MessageOutputItem:
    agent: AgentRef
    raw_item: Any
    type: Literal["message_output_item"] = "message_output_item"


@dataclass
class ToolCallItem:
    agent: AgentRef
    raw_item: Any
    type: Literal["tool_call_item"] = "tool_call_item"


@dataclass
class ToolCallOutputItem:
    agent: AgentRef
    raw_item: Dict[str, Any]
    output: Any
    type: Literal["tool_call_output_item"] = "tool_call_output_item"


@dataclass
class HandoffCallItem:
    agent: AgentRef
    raw_item: Any
    type: Literal["handoff_call_item"] = "handoff_call_item"


@dataclass
class HandoffOutputItem:
    agent: AgentRef
    raw_item: Dict[str, Any]
    source_agent: AgentRef
    target_agent: AgentRef
    type: Literal["handoff_output_item"] = "handoff_output_item"


@dataclass
class ReasoningItem:
    agent: AgentRef
    raw_item: Any
    type: Literal["reasoning_item"] = "reasoning_item"


RunItem = Union[
    MessageOutputItem,
    ToolCallItem,
    ToolCallOutputItem,
    HandoffCallItem,
    HandoffOutputItem,
    ReasoningItem,
]


@dataclass
class RawResponsesStreamEvent:
    data: Any
    type: Literal["raw_response_event"] = "raw_response_event"


@dataclass
class RunItemStreamEvent:
    name: str
    item: Any
    type: Literal["run_item_stream_event"] = "run_item_stream_event"


@dataclass
class AgentUpdatedStreamEvent:
    new_agent: AgentRef
    type: Literal["agent_updated_stream_event"] = "agent_updated_stream_event"


StreamEvent = Union[RawResponsesStreamEvent, RunItemStreamEvent, AgentUpdatedStreamEvent]


class ItemHelpers:
    """The SDK's ``ItemHelpers`` functions that read run items."""

    @staticmethod
    def text_message_output(item: MessageOutputItem) -> str:
        """The text of a message output item."""
        out = []
        for part in _get(item.raw_item, "content") or []:
            if _get(part, "type") == "output_text":
                out.append(_get(part, "text") or "")
        return "".join(out)

    @staticmethod
    def text_message_outputs(items: List[Any]) -> str:
        """The text of every message output item among ``items``."""
        return "".join(
            ItemHelpers.text_message_output(i)
            for i in items
            if isinstance(i, MessageOutputItem)
        )


def _get(o: Any, k: str) -> Any:
    if isinstance(o, dict):
        return o.get(k)
    return getattr(o, k, None)


def _run_item(v: Dict[str, Any], use_openai: bool) -> Any:
    ty = v.get("type")
    agent = AgentRef(v.get("agent", ""))
    raw = v.get("raw_item") or {}
    if ty == "message_output_item":
        return MessageOutputItem(agent, t.output_message(raw, use_openai))
    if ty == "tool_call_item":
        return ToolCallItem(agent, t.function_call(raw, use_openai))
    if ty == "tool_call_output_item":
        return ToolCallOutputItem(agent, dict(raw), v.get("output"))
    if ty == "handoff_call_item":
        return HandoffCallItem(agent, t.function_call(raw, use_openai))
    if ty == "handoff_output_item":
        return HandoffOutputItem(
            agent,
            dict(raw),
            AgentRef(v.get("source_agent", "")),
            AgentRef(v.get("target_agent", "")),
        )
    if ty == "reasoning_item":
        return ReasoningItem(agent, t.reasoning_item(raw, use_openai))
    return t.Obj(v)


def stream_event(v: Dict[str, Any], use_openai: bool = t.USING_OPENAI) -> Any:
    """One stream event (PROTOCOL.md section 1 JSON) as the SDK's event object."""
    ty = v.get("type")
    if ty == "raw_response_event":
        return RawResponsesStreamEvent(t.raw_event(v.get("data") or {}, use_openai))
    if ty == "run_item_stream_event":
        return RunItemStreamEvent(
            v.get("name", ""), _run_item(v.get("item") or {}, use_openai)
        )
    if ty == "agent_updated_stream_event":
        return AgentUpdatedStreamEvent(AgentRef((v.get("new_agent") or {}).get("name", "")))
    return t.Obj(v)
