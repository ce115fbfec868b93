"""The load harness's workload through the Python OpenAI Agents SDK.

Runs `Runner.run_streamed` at a given concurrency against the harness's fake model server:
Triage calls get_weather, hands off to Writer, Writer streams an answer of N deltas
(`w<i>@<ns> `). Every run is checked (deltas in order, final output = their text). Prints
one JSON line: runs, errors, runs/s, CPU seconds per run (getrusage) and peak RSS.

    python driver.py --base-url http://127.0.0.1:PORT/v1 --api chat --concurrency 50 --runs 300
"""

import argparse
import asyncio
import json
import os
import resource
import sys
import time


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--api", choices=["chat", "responses"], default="chat")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--timeout", type=float, default=300.0)
    a = p.parse_args()

    from openai import AsyncOpenAI
    from agents import (
        Agent,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )
    from agents.items import ItemHelpers  # noqa: F401  (imported as a user would)

    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=a.base_url, api_key="sk-fake", max_retries=0)
    if a.api == "chat":
        model = OpenAIChatCompletionsModel(model="fake", openai_client=client)
    else:
        model = OpenAIResponsesModel(model="fake", openai_client=client)

    @function_tool
    def get_weather(city: str) -> str:
        """Weather for a city."""
        return f"sunny in {city}, 12°C"

    writer = Agent(
        name="Writer",
        instructions="Write the answer.",
        handoff_description="Writes the answer.",
        model=model,
    )
    triage = Agent(
        name="Triage",
        instructions="Get the weather, then hand off to Writer.",
        model=model,
        tools=[get_weather],
        handoffs=[writer],
    )
    prompt = f"weather in Oslo please tokens={a.tokens}"

    async def one_run() -> int:
        res = Runner.run_streamed(triage, prompt)
        expected = 0
        text = []
        events = 0
        async for ev in res.stream_events():
            events += 1
            if ev.type == "raw_response_event" and getattr(ev.data, "type", "") == "response.output_text.delta":
                d = ev.data.delta
                if not d.startswith(f"w{expected}@"):
                    raise RuntimeError(f"delta {d!r} out of order (expected w{expected}@)")
                expected += 1
                text.append(d)
        if expected != a.tokens:
            raise RuntimeError(f"{expected} deltas, expected {a.tokens}")
        if res.final_output != "".join(text):
            raise RuntimeError("final output differs from the deltas")
        if res.last_agent.name != "Writer":
            raise RuntimeError(f"last agent {res.last_agent.name}")
        return events

    errors = 0
    events_total = 0
    first_error = None

    async def worker(n: int) -> None:
        nonlocal errors, events_total, first_error
        for _ in range(n):
            try:
                n_events = await one_run()
                events_total += n_events
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors += 1
                if first_error is None:
                    first_error = repr(e)

    # Warm up (imports, connection pool), then measure.
    await asyncio.gather(*(worker(1) for _ in range(min(a.warmup, a.concurrency))))
    errors = 0
    events_total = 0
    per = [a.runs // a.concurrency + (1 if i < a.runs % a.concurrency else 0) for i in range(a.concurrency)]
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker(n) for n in per if n > 0)), a.timeout)
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds() - c0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    import agents  # noqa: E402
    from importlib.metadata import version

    out = {
        "impl": "openai-agents " + version("openai-agents"),
        "python": sys.version.split()[0],
        "api": a.api,
        "concurrency": a.concurrency,
        "runs": a.runs,
        "errors": errors,
        "first_error": first_error,
        "events": events_total,
        "elapsed_s": elapsed,
        "runs_per_s": a.runs / elapsed if elapsed > 0 else 0.0,
        "cpu_s": cpu,
        "cpu_ms_per_run": 1000.0 * cpu / max(a.runs, 1),
        "peak_rss_kib": peak_kib,
        "pid": os.getpid(),
    }
    await client.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
