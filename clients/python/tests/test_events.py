"""Event conversion without a server: SDK names and attributes, with and without openai."""

import pytest

from callboard_client import ItemHelpers, MessageOutputItem, types
from callboard_client.events import stream_event

DELTA = {
    "type": "raw_response_event",
    "data": {
        "type": "response.output_text.delta",
        "item_id": "msg_1",
        "output_index": 0,
        "content_index": 0,
        "delta": "Hel",
        "logprobs": [],
        "sequence_number": 7,
    },
}
TOOL_CALLED = {
    "type": "run_item_stream_event",
    "name": "tool_called",
    "item": {
        "type": "tool_call_item",
        "agent": "Weather",
        "raw_item": {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city":"Oslo"}',
        },
    },
}
MESSAGE = {
    "type": "run_item_stream_event",
    "name": "message_output_created",
    "item": {
        "type": "message_output_item",
        "agent": "Weather",
        "raw_item": {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Sunny.", "annotations": [], "logprobs": []}],
        },
    },
}


@pytest.mark.parametrize("use_openai", [False, True])
def test_events_carry_the_sdk_attributes(use_openai):
    if use_openai and not types.USING_OPENAI:
        pytest.skip("openai is not installed (pip install openai)")
    e = stream_event(DELTA, use_openai)
    assert e.type == "raw_response_event"
    assert e.data.delta == "Hel" and e.data.sequence_number == 7
    expected = types.ResponseTextDeltaEvent if use_openai else types._fallback["ResponseTextDeltaEvent"]
    assert isinstance(e.data, expected)
    if use_openai:
        assert type(e.data).__module__.startswith("openai.")

    e = stream_event(TOOL_CALLED, use_openai)
    assert e.name == "tool_called"
    assert e.item.type == "tool_call_item"
    assert e.item.raw_item.name == "get_weather"
    assert e.item.raw_item.arguments == '{"city":"Oslo"}'
    assert e.item.agent.name == "Weather"

    e = stream_event(MESSAGE, use_openai)
    assert isinstance(e.item, MessageOutputItem)
    assert ItemHelpers.text_message_output(e.item) == "Sunny."

    e = stream_event({"type": "agent_updated_stream_event", "new_agent": {"name": "Billing"}})
    assert e.new_agent.name == "Billing"


def test_unknown_raw_events_keep_their_data():
    e = stream_event({"type": "raw_response_event", "data": {"type": "response.future", "x": {"y": 1}}})
    assert e.data.type == "response.future"
    assert e.data.x.y == 1 and e.data["x"]["y"] == 1
    assert e.data.model_dump() == {"type": "response.future", "x": {"y": 1}}


def test_fallback_message_parts_have_classes():
    e = stream_event(MESSAGE, use_openai=False)
    part = e.item.raw_item.content[0]
    assert isinstance(part, types._fallback["ResponseOutputText"])
    assert part.text == "Sunny."
