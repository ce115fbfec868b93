"""``CallboardClient`` and its streamed runs, over callboard's WebSocket (PROTOCOL.md section 2).

A streamed run is driven by one background task per run: it connects, sends ``run.create``,
reads the session's frames and hands the run's events to ``stream_events()`` through a
bounded queue. When the connection drops, it reconnects and resubscribes with
``after_seq`` = the last seq it saw, so nothing is lost or seen twice; when the server says
``lagged`` (the consumer fell behind), it resubscribes the same way.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Optional, Union
from urllib.parse import urlsplit, urlunsplit

import websockets

from . import events as ev
from .errors import AuthenticationError, CallboardError, ConnectionLost, run_error

__all__ = ["CallboardClient", "RunResultStreaming", "RunContextWrapper"]

ToolHandler = Callable[[Dict[str, Any]], Union[str, Awaitable[str]]]

_END = object()
# Events a consumer may have unread before the driver stops reading the socket (the server
# then tells this connection `lagged` and it resumes from history once there is room).
_QUEUE_EVENTS = 1024


def _ws_url(base: str) -> str:
    u = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(u.scheme, u.scheme)
    path = u.path.rstrip("/") + "/v1/ws"
    return urlunsplit((scheme, u.netloc, path, "", ""))


class RunContextWrapper:
    """What the SDK keeps in ``result.context_wrapper``: here, the usage."""

    def __init__(self, usage: ev.Usage) -> None:
        self.usage = usage


class CallboardClient:
    """A client of one callboard server.

    ``url`` is the server's base URL (``http://127.0.0.1:7700``), ``key`` an API key from its
    ``[[auth.keys]]`` (``None`` when auth is off). ``reconnect_timeout`` bounds how long a
    dropped connection is retried before the stream raises ``ConnectionLost``.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:7700",
        key: Optional[str] = None,
        *,
        reconnect_timeout: float = 30.0,
        open_timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.reconnect_timeout = reconnect_timeout
        self.open_timeout = open_timeout
        self._ws_url = _ws_url(self.url)

    async def _connect(self) -> Any:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else None
        try:
            return await websockets.connect(
                self._ws_url,
                additional_headers=headers,
                open_timeout=self.open_timeout,
                max_size=None,
            )
        except websockets.InvalidStatus as e:
            status = e.response.status_code
            body = e.response.body.decode("utf-8", "replace") if e.response.body else ""
            code, message = "http_error", body or f"HTTP {status}"
            try:
                err = json.loads(body)["error"]
                code, message = err["code"], err["message"]
            except (ValueError, KeyError, TypeError):
                pass
            if status == 401:
                raise AuthenticationError("unauthorized", message) from None
            raise CallboardError(code, message) from None

    def run_streamed(
        self,
        agent: Union[str, Any],
        input: Union[str, List[Dict[str, Any]]],
        *,
        session_id: Optional[str] = None,
        session: Any = None,
        max_turns: Optional[int] = None,
        metadata: Optional[Dict[str, Any]] = None,
        client_tools: Optional[Dict[str, ToolHandler]] = None,
    ) -> "RunResultStreaming":
        """Starts a run of ``agent`` (a name, or anything with a ``name``) on ``input`` in a
        session, as ``Runner.run_streamed`` does; iterate ``stream_events()`` for its events.

        ``session_id`` names the session (``session`` may instead be an SDK session object
        with a ``session_id``, or a string); without either a new session id is made.
        ``client_tools`` answers the agent's client-side tools (``kind = "client"``): each
        handler gets the parsed arguments and returns the output string.
        """
        name = agent if isinstance(agent, str) else getattr(agent, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError("agent must be an agent name or an object with a `name`")
        if session_id is None and session is not None:
            session_id = session if isinstance(session, str) else getattr(session, "session_id", None)
        if session_id is None:
            session_id = "py_" + "".join(random.choice("0123456789abcdef") for _ in range(24))
        req: Dict[str, Any] = {
            "type": "run.create",
            "id": "py-1",
            "session_id": session_id,
            "agent": name,
            "input": input,
        }
        if max_turns is not None:
            req["max_turns"] = max_turns
        if metadata:
            req["metadata"] = metadata
        return RunResultStreaming(self, req, name, client_tools or {})


class RunResultStreaming:
    """A run in progress, as the SDK's ``RunResultStreaming``: ``stream_events()``,
    ``final_output``, ``last_agent``, ``current_agent``, ``usage``, ``is_complete``,
    ``new_items``, ``cancel(mode)``; plus callboard's ``run_id``, ``session_id``,
    ``trace_id`` and ``last_seq``.
    """

    def __init__(
        self,
        client: CallboardClient,
        request: Dict[str, Any],
        agent: str,
        client_tools: Dict[str, ToolHandler],
    ) -> None:
        self._client = client
        self._request = request
        self._client_tools = client_tools
        self.session_id: str = request["session_id"]
        self.run_id: Optional[str] = None
        self.trace_id: Optional[str] = None
        self.input = request["input"]
        self.current_agent = ev.AgentRef(agent)
        self.last_agent = ev.AgentRef(agent)
        self.final_output: Any = None
        self.usage = ev.Usage()
        self.context_wrapper = RunContextWrapper(self.usage)
        self.new_items: List[Any] = []
        self.is_complete = False
        self.cancelled_mode: Optional[str] = None
        self.last_seq = 0
        self.reconnects = 0
        self._error: Optional[BaseException] = None
        self._queue: Optional[asyncio.Queue] = None
        self._driver: Optional[asyncio.Task] = None
        self._ws: Any = None
        self._cancel_mode: Optional[str] = None
        self._cancel_sent = False
        self._epoch: Optional[str] = None
        self._progress = False
        try:
            asyncio.get_running_loop()
            self._start()
        except RuntimeError:
            pass  # no loop yet: the run starts with stream_events()

    # -- the SDK's surface -------------------------------------------------------------

    async def stream_events(self) -> AsyncIterator[ev.StreamEvent]:
        """The run's events as they arrive; raises the run's error after its last event."""
        self._start()
        assert self._queue is not None
        try:
            while True:
                item = await self._queue.get()
                if item is _END:
                    break
                yield item
        finally:
            if self._driver is not None and not self._driver.done():
                # The consumer stopped early: stop following the run (it goes on server-side).
                self._driver.cancel()
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def cancel(self, mode: str = "immediate") -> None:
        """Cancels the run (``immediate`` or ``after_turn``); the stream ends with the run."""
        if mode not in ("immediate", "after_turn"):
            raise ValueError("mode must be 'immediate' or 'after_turn'")
        if self._cancel_mode is None:
            self._cancel_mode = mode
        if self._driver is not None and self._ws is not None and self.run_id is not None:
            self._driver.get_loop().create_task(self._send_cancel())

    def to_input_list(self) -> List[Any]:
        """The run's input followed by its new items, as model input."""
        items: List[Any] = (
            [{"role": "user", "content": self.input}] if isinstance(self.input, str) else list(self.input)
        )
        for i in self.new_items:
            raw = i.raw_item
            items.append(raw.model_dump() if hasattr(raw, "model_dump") else raw)
        return items

    # -- the driver --------------------------------------------------------------------

    def _start(self) -> None:
        if self._driver is None:
            self._queue = asyncio.Queue(maxsize=_QUEUE_EVENTS)
            self._driver = asyncio.get_running_loop().create_task(self._drive())

    async def _send(self, frame: Dict[str, Any]) -> None:
        if self._ws is not None:
            await self._ws.send(json.dumps(frame))

    async def _send_cancel(self) -> None:
        if self._cancel_sent or self._cancel_mode is None or self.run_id is None:
            return
        self._cancel_sent = True
        try:
            await self._send({"type": "run.cancel", "run_id": self.run_id, "mode": self._cancel_mode})
        except websockets.ConnectionClosed:
            self._cancel_sent = False  # sent again after the reconnect

    async def _drive(self) -> None:
        assert self._queue is not None
        try:
            await self._follow()
        except asyncio.CancelledError:
            # The consumer left: close quietly; nobody waits for the end marker.
            await self._close()
            raise
        except Exception as e:  # every failure reaches the consumer, never a hang
            self._error = e
        await self._close()
        await self._queue.put(_END)

    async def _close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        first = True
        deadline: Optional[float] = None
        delay = 0.05
        while True:
            try:
                self._ws = await self._client._connect()
            except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake) as e:
                if first:
                    raise
                if deadline is not None and loop.time() > deadline:
                    raise ConnectionLost(
                        "connection_lost",
                        f"could not reconnect to {self._client.url} within "
                        f"{self._client.reconnect_timeout:.0f}s: {e}",
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            if first:
                await self._send(self._request)
            else:
                await self._resubscribe()
            first = False
            try:
                if await self._read():
                    return
            except (websockets.ConnectionClosed, OSError):
                pass
            if self.run_id is None:
                # Dropped before the server said which run is ours: following the session
                # could pick up someone else's run, so say so instead.
                raise ConnectionLost(
                    "connection_lost",
                    "the connection dropped before the run was accepted; "
                    "whether it started is unknown (see GET /v1/sessions/{id}/items)",
                )
            self.reconnects += 1
            self._cancel_sent = False
            if self._progress or deadline is None:
                # Retried for at most reconnect_timeout since the last frame that got through.
                deadline = loop.time() + self._client.reconnect_timeout
            elif loop.time() > deadline:
                raise ConnectionLost(
                    "connection_lost",
                    f"the connection to {self._client.url} keeps dropping; gave up after "
                    f"{self._client.reconnect_timeout:.0f}s without a frame",
                )
            self._progress = False
            self._ws = None

    async def _resubscribe(self) -> None:
        frame: Dict[str, Any] = {
            "type": "session.subscribe",
            "session_id": self.session_id,
            "after_seq": self.last_seq,
        }
        if self._epoch is not None:
            frame["epoch"] = self._epoch
        await self._send(frame)
        if self._cancel_mode is not None:
            await self._send_cancel()

    async def _read(self) -> bool:
        """Reads frames until the run ends (True) or the connection drops (raises)."""
        assert self._queue is not None
        pending: List[Dict[str, Any]] = []  # our run's frames may precede run.accepted
        async for message in self._ws:
            self._progress = True
            f = json.loads(message)
            ty = f.get("type")
            if ty == "run.accepted":
                self.run_id = f.get("run_id")
                self.trace_id = f.get("trace_id")
                self._epoch = f.get("epoch")
                if self._cancel_mode is not None:
                    await self._send_cancel()
                for p in pending:
                    if await self._frame(p):
                        return True
                pending.clear()
                continue
            if ty == "error":
                err = f.get("error") or {}
                raise CallboardError(
                    err.get("code", "error"), err.get("message", ""), err.get("oldest_seq")
                )
            if ty == "lagged":
                self.last_seq = max(self.last_seq, int(f.get("resume_after_seq", 0)))
                await self._resubscribe()
                continue
            if "seq" not in f:
                continue  # pong, acknowledgements
            if self.run_id is None:
                pending.append(f)
                continue
            if await self._frame(f):
                return True
        raise websockets.ConnectionClosed(None, None)

    async def _frame(self, f: Dict[str, Any]) -> bool:
        """Handles one numbered frame; True when it ends the run."""
        assert self._queue is not None
        seq = int(f.get("seq", 0))
        if seq <= self.last_seq:
            return False  # already seen (a resubscription overlaps)
        self.last_seq = seq
        if f.get("run_id") != self.run_id:
            return False
        ty = f.get("type")
        if ty == "event":
            event = ev.stream_event(f.get("event") or {})
            self._observe(event, f.get("event") or {})
            await self._queue.put(event)
            return False
        if ty == "tool.call":
            await self._answer_tool(f)
            return False
        if ty == "run.completed":
            self.final_output = f.get("final_output")
            self.last_agent = ev.AgentRef(f.get("last_agent") or self.current_agent.name)
            u = ev.Usage.from_json(f.get("usage"))
            self.usage.__dict__.update(u.__dict__)
            self.trace_id = f.get("trace_id", self.trace_id)
            self.is_complete = True
            return True
        if ty == "run.failed":
            err = f.get("error") or {}
            self.is_complete = True
            self._error = run_error(err.get("type", "AgentsException"), err.get("message", ""))
            return True
        if ty == "run.cancelled":
            self.cancelled_mode = f.get("mode")
            self.is_complete = True
            return True
        return False

    def _observe(self, event: Any, raw: Dict[str, Any]) -> None:
        if event.type == "agent_updated_stream_event":
            self.current_agent = event.new_agent
            self.last_agent = event.new_agent
        elif event.type == "run_item_stream_event":
            self.new_items.append(event.item)
        elif event.type == "raw_response_event":
            data = raw.get("data") or {}
            if data.get("type") == "response.completed":
                # Usage while streaming: each model response adds its tokens.
                self.usage.add_response((data.get("response") or {}).get("usage"))

    async def _answer_tool(self, f: Dict[str, Any]) -> None:
        handler = self._client_tools.get(f.get("name", ""))
        if handler is None:
            return  # another client of the session may answer it
        try:
            args = json.loads(f.get("arguments") or "{}")
        except ValueError:
            args = {"arguments": f.get("arguments")}
        out = handler(args)
        if inspect.isawaitable(out):
            out = await out
        await self._send(
            {"type": "tool.result", "run_id": self.run_id, "call_id": f.get("call_id"), "output": str(out)}
        )

