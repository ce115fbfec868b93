"""callboard_client: callboard runs from Python with the OpenAI Agents SDK's stream events.

    from callboard_client import CallboardClient
    from callboard_client.types import ResponseTextDeltaEvent

    client = CallboardClient("http://127.0.0.1:7700", "my-key")
    result = client.run_streamed("Triage", "What is the weather in Oslo?", session_id="s1")
    async for event in result.stream_events():
        if event.type == "raw_response_event" and isinstance(event.data, ResponseTextDeltaEvent):
            print(event.data.delta, end="", flush=True)
    print(result.final_output, result.last_agent.name, result.usage)
"""

from .client import CallboardClient, RunContextWrapper, RunResultStreaming
from .errors import (
    AgentsException,
    AuthenticationError,
    CallboardError,
    ConnectionLost,
    InputGuardrailTripwireTriggered,
    MaxTurnsExceeded,
    ModelBehaviorError,
    ModelTimeoutError,
    OutputGuardrailTripwireTriggered,
    ToolTimeoutError,
    UserError,
)
from .events import (
    AgentRef,
    AgentUpdatedStreamEvent,
    HandoffCallItem,
    HandoffOutputItem,
    ItemHelpers,
    MessageOutputItem,
    RawResponsesStreamEvent,
    ReasoningItem,
    RunItemStreamEvent,
    ToolCallItem,
    ToolCallOutputItem,
    Usage,
)

Agent = AgentRef
"""An agent by name (``Agent("Triage")``), for code that passes agents to ``run_streamed``."""

__version__ = "0.1.0"

__all__ = [
    "CallboardClient",
    "RunResultStreaming",
    "RunContextWrapper",
    "Agent",
    "AgentRef",
    "Usage",
    "ItemHelpers",
    "RawResponsesStreamEvent",
    "RunItemStreamEvent",
    "AgentUpdatedStreamEvent",
    "MessageOutputItem",
    "ToolCallItem",
    "ToolCallOutputItem",
    "HandoffCallItem",
    "HandoffOutputItem",
    "ReasoningItem",
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
]
