"""The client against a real callboard server (started by tests/python_client.rs with the
demo cast on the scripted model, 20 ms per text delta)."""

import asyncio
import importlib.util
import uuid
from urllib.parse import urlsplit

import pytest

from callboard_client import (
    AuthenticationError,
    CallboardClient,
    CallboardError,
    ItemHelpers,
    MaxTurnsExceeded,
    types,
)
from conftest import HERE, KEY, URL, Proxy, get_json, needs_server

pytestmark = needs_server


def session() -> str:
    return "py-" + uuid.uuid4().hex[:12]


def load_example():
    spec = importlib.util.spec_from_file_location("chat_stream", HERE.parent / "examples" / "chat_stream.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def signature(e) -> str:
    if e.type == "raw_response_event":
        return f"raw {e.data.type}"
    if e.type == "run_item_stream_event":
        return f"item {e.name}"
    return f"agent {e.new_agent.name}"


async def collect(result):
    return [e async for e in result.stream_events()]


def test_the_sdk_chat_stream_example_runs_unchanged_but_for_imports_and_runner():
    example = load_example()
    sid = session()

    async def go():
        return [d async for d in example.chat_stream(sid, "What is the weather in Oslo?")]

    deltas = asyncio.run(go())
    assert len(deltas) == 20
    text = "".join(deltas)
    assert text.startswith("Here is the forecast you asked for: it is ")
    # The session on the server holds the same answer.
    items = get_json(f"/v1/sessions/{sid}/items")["items"]
    last = [i for i in items if i.get("role") == "assistant"][-1]
    assert last["content"][0]["text"] == text
    if types.USING_OPENAI:
        assert example.ResponseTextDeltaEvent.__module__.startswith("openai.")


def test_events_final_output_agents_and_usage_are_the_sdks():
    client = CallboardClient(URL, KEY)

    async def go():
        result = client.run_streamed("Triage", "What is the weather in Bergen?", session_id=session())
        events = await collect(result)
        return result, events

    result, events = asyncio.run(go())
    agents = [e.new_agent.name for e in events if e.type == "agent_updated_stream_event"]
    assert agents == ["Triage", "Weather"]
    calls = [e.item for e in events if e.type == "run_item_stream_event" and e.item.type == "tool_call_item"]
    assert [c.raw_item.name for c in calls] == ["get_weather"]
    names = [e.name for e in events if e.type == "run_item_stream_event"]
    assert names == ["handoff_requested", "handoff_occured", "tool_called", "tool_output", "message_output_created"]
    message = [e.item for e in events if e.type == "run_item_stream_event" and e.name == "message_output_created"][0]
    assert ItemHelpers.text_message_output(message) == result.final_output
    assert result.is_complete
    assert result.last_agent.name == "Weather"
    assert result.usage.requests == 3 and result.usage.total_tokens > 0
    assert result.context_wrapper.usage is result.usage
    assert result.run_id.startswith("run_")


def test_a_dropped_connection_resumes_with_nothing_lost_or_repeated():
    host = urlsplit(URL)

    async def reference():
        r = CallboardClient(URL, KEY).run_streamed("Triage", "What is the weather in Oslo?", session_id=session())
        return [signature(e) for e in await collect(r)], r

    async def dropped():
        proxy = Proxy(host.hostname, host.port)
        port = await proxy.start()
        client = CallboardClient(f"http://127.0.0.1:{port}", KEY)
        result = client.run_streamed("Triage", "What is the weather in Oslo?", session_id=session())
        seen, deltas = [], 0
        async for e in result.stream_events():
            seen.append(signature(e))
            if e.type == "raw_response_event" and e.data.type == "response.output_text.delta":
                deltas += 1
                if deltas == 5:
                    proxy.cut()  # mid-answer: 15 deltas are still to come
        accepted = proxy.accepted
        await proxy.close()
        return seen, result, accepted

    ref, ref_result = asyncio.run(reference())
    seen, result, accepted = asyncio.run(dropped())
    assert result.reconnects == 1 and accepted == 2
    assert seen == ref, "the resumed stream differs from an undisturbed one"
    assert result.final_output == ref_result.final_output
    assert result.last_agent.name == "Weather"


def test_cancel_ends_the_stream_and_frees_the_session():
    client = CallboardClient(URL, KEY)
    sid = session()

    async def go():
        result = client.run_streamed("Triage", "A question about my invoice", session_id=sid)
        deltas = 0
        async for e in result.stream_events():
            if e.type == "raw_response_event" and e.data.type == "response.output_text.delta":
                deltas += 1
                if deltas == 1:
                    result.cancel()
        again = client.run_streamed("Triage", "And my refund?", session_id=sid)
        await collect(again)
        return result, deltas, again

    result, deltas, again = asyncio.run(go())
    assert result.cancelled_mode == "immediate"
    assert result.is_complete and result.final_output is None
    assert 1 <= deltas < 20
    assert again.final_output.startswith("Thanks for reaching Billing")


def test_a_wrong_or_missing_key_is_an_authentication_error():
    for key in ("not-a-key", None):
        client = CallboardClient(URL, key)

        async def go():
            await collect(client.run_streamed("Triage", "hi", session_id=session()))

        with pytest.raises(AuthenticationError) as e:
            asyncio.run(go())
        assert e.value.code == "unauthorized"


def test_a_failed_run_raises_the_sdk_exception_after_its_events():
    client = CallboardClient(URL, KEY)
    events = []

    async def go():
        result = client.run_streamed("Triage", "What is the weather?", session_id=session(), max_turns=1)
        async for e in result.stream_events():
            events.append(e)

    with pytest.raises(MaxTurnsExceeded, match=r"Max turns \(1\) exceeded"):
        asyncio.run(go())
    assert any(e.type == "agent_updated_stream_event" for e in events)


def test_a_refused_request_raises_with_its_code():
    client = CallboardClient(URL, KEY)

    async def go():
        await collect(client.run_streamed("Nobody", "hi", session_id=session()))

    with pytest.raises(CallboardError) as e:
        asyncio.run(go())
    assert e.value.code == "unknown_agent"
