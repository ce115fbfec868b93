// AG-UI's own client (`HttpAgent` of @ag-ui/client) against callboard: it parses the SSE,
// validates every event with @ag-ui/core's schemas and checks the event sequence; these
// tests check what it received and what it made of it.

import { test } from "node:test";
import assert from "node:assert/strict";
import { HttpAgent } from "@ag-ui/client";
import { EventSchema } from "@ag-ui/core/schemas";
import { URL, TOOLS_URL, auth, newId, sessionItems } from "./chat.mjs";

const agentFor = (base, name, headers = auth) =>
  new HttpAgent({ url: `${base}/v1/agents/${name}/ag-ui`, headers, threadId: newId(`agui-${name}`) });

/** Runs the agent once; returns the events it received (each checked against the schema). */
async function run(agent, runId = newId("r")) {
  const events = [];
  await agent.runAgent({ runId }, {
    onEvent: ({ event }) => {
      EventSchema.parse(event);
      events.push(event);
    },
  });
  return events;
}

const short = (e) => {
  switch (e.type) {
    case "STEP_STARTED":
    case "STEP_FINISHED":
      return `${e.type} ${e.stepName}`;
    case "TOOL_CALL_START":
      return `${e.type} ${e.toolCallName}`;
    default:
      return e.type;
  }
};

/** Collapses repeated CONTENT / ARGS events into one. */
const collapse = (names) => names.filter((n, i) => !(n.endsWith("_CONTENT") || n.endsWith("_ARGS")) || names[i - 1] !== n);

test("HttpAgent runs the demo cast: a step per agent, tool calls with results, streamed text", async () => {
  const agent = agentFor(URL, "Triage");
  agent.addMessage({ id: "u1", role: "user", content: "What is the weather in Oslo?" });
  const runId = newId("r");
  const events = await run(agent, runId);
  assert.deepEqual(collapse(events.map(short)), [
    "RUN_STARTED",
    "STEP_STARTED Triage",
    "TOOL_CALL_START transfer_to_weather",
    "TOOL_CALL_ARGS",
    "TOOL_CALL_END",
    "TOOL_CALL_RESULT",
    "STEP_FINISHED Triage",
    "STEP_STARTED Weather",
    "TOOL_CALL_START get_weather",
    "TOOL_CALL_ARGS",
    "TOOL_CALL_END",
    "TOOL_CALL_RESULT",
    "TEXT_MESSAGE_START",
    "TEXT_MESSAGE_CONTENT",
    "TEXT_MESSAGE_END",
    "STEP_FINISHED Weather",
    "RUN_FINISHED",
  ]);
  assert.equal(events.filter((e) => e.type === "TEXT_MESSAGE_CONTENT").length, 20);
  assert.equal(events[0].threadId, agent.threadId);
  assert.equal(events[0].runId, runId);
  const finished = events.at(-1);
  assert.equal(finished.runId, runId);
  assert.match(finished.result, /^Here is the forecast you asked for/);
  assert.ok(finished.usage[0].totalTokens > 0);
  // What the client made of it: the assistant's text, its tool calls and their results.
  const assistant = agent.messages.filter((m) => m.role === "assistant");
  assert.ok(assistant.some((m) => m.toolCalls?.some((c) => c.function.name === "get_weather" && c.function.arguments === '{"city":"Oslo"}')));
  assert.equal(assistant.at(-1).content, finished.result);
  const tool = agent.messages.filter((m) => m.role === "tool");
  assert.equal(tool.length, 2);
  assert.match(tool[1].content, /Oslo/);
  const items = await sessionItems(URL, agent.threadId);
  assert.equal(items.at(-1).content[0].text, finished.result);
});

test("a failing run ends with RUN_ERROR carrying the SDK exception", async () => {
  const agent = agentFor(TOOLS_URL, "Broken");
  agent.addMessage({ id: "u1", role: "user", content: "hello" });
  const events = [];
  const errors = [];
  await agent
    .runAgent({ runId: newId("r") }, {
      onEvent: ({ event }) => {
        EventSchema.parse(event);
        events.push(event);
      },
      onRunErrorEvent: ({ event }) => errors.push(event),
    })
    .catch(() => {});
  assert.equal(events[0].type, "RUN_STARTED");
  assert.equal(events.at(-1).type, "RUN_ERROR");
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "ModelBehaviorError");
});

test("a client-side tool: the run pauses, the tool message answers it, the next run goes on", async () => {
  const agent = agentFor(TOOLS_URL, "Concierge");
  agent.addMessage({ id: "u1", role: "user", content: "A table for two at 8, please" });
  const first = await run(agent);
  assert.deepEqual(collapse(first.map(short)), [
    "RUN_STARTED",
    "STEP_STARTED Concierge",
    "TOOL_CALL_START confirm_with_user",
    "TOOL_CALL_ARGS",
    "TOOL_CALL_END",
    "STEP_FINISHED Concierge",
    "RUN_FINISHED",
  ]);
  const start = first.find((e) => e.type === "TOOL_CALL_START");
  assert.deepEqual(first.at(-1).outcome, { type: "success", pendingToolCallIds: [start.toolCallId] });
  const call = agent.messages.find((m) => m.role === "assistant").toolCalls[0];
  assert.equal(JSON.parse(call.function.arguments).question, "Book the table for two at 8?");

  agent.addMessage({ id: "t1", role: "tool", toolCallId: call.id, content: "yes, book it" });
  const second = await run(agent);
  assert.deepEqual(collapse(second.map(short)), [
    "RUN_STARTED",
    "STEP_STARTED Concierge",
    "TEXT_MESSAGE_START",
    "TEXT_MESSAGE_CONTENT",
    "TEXT_MESSAGE_END",
    "STEP_FINISHED Concierge",
    "RUN_FINISHED",
  ]);
  assert.equal(second.at(-1).result, "Booked: a table for two at 8.");
  assert.equal(agent.messages.at(-1).content, "Booked: a table for two at 8.");
  const items = await sessionItems(TOOLS_URL, agent.threadId);
  assert.ok(items.some((i) => i.type === "function_call_output" && i.output === "yes, book it"));
});

test("a wrong key is refused with 401 before any event", async () => {
  const agent = agentFor(URL, "Triage", { Authorization: "Bearer wrong" });
  agent.addMessage({ id: "u1", role: "user", content: "hi" });
  await assert.rejects(agent.runAgent({ runId: newId("r") }), (e) => {
    assert.equal(e.status, 401);
    assert.equal(e.payload.error.code, "unauthorized");
    return true;
  });
});
