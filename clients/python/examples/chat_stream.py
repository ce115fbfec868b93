"""The Agents SDK's chat_stream, served by callboard.

With the SDK this generator reads:

    from openai.types.responses import ResponseTextDeltaEvent
    from agents import Runner, SQLiteSession

    async def chat_stream(session_id: str, message: str):
        result = Runner.run_streamed(triage_agent, input=message, session=SQLiteSession(session_id))
        async for event in result.stream_events():
            if event.type == "raw_response_event" and isinstance(event.data, ResponseTextDeltaEvent):
                yield event.data.delta

On callboard only the imports and the runner change: the agents and the session memory live
on the server, the agent is named, and the session is the session id.

    CALLBOARD_URL=http://127.0.0.1:7700 CALLBOARD_KEY=... python3 chat_stream.py "weather in Oslo?"
"""

import asyncio
import os
import sys

from callboard_client import CallboardClient
from callboard_client.types import ResponseTextDeltaEvent

runner = CallboardClient(os.environ.get("CALLBOARD_URL", "http://127.0.0.1:7700"), os.environ.get("CALLBOARD_KEY"))
triage_agent = "Triage"


async def chat_stream(session_id: str, message: str):
    result = runner.run_streamed(triage_agent, input=message, session_id=session_id)
    async for event in result.stream_events():
        if event.type == "raw_response_event" and isinstance(event.data, ResponseTextDeltaEvent):
            yield event.data.delta


async def main() -> None:
    message = " ".join(sys.argv[1:]) or "What is the weather in Oslo?"
    async for delta in chat_stream("chat-stream-example", message):
        print(delta, end="", flush=True)
    print()


if __name__ == "__main__":
    asyncio.run(main())
