// The Vercel AI SDK (npm `ai`) against callboard's UI message stream: useChat's chat
// (AbstractChat + DefaultChatTransport) and readUIMessageStream, unmodified.

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  DefaultChatTransport,
  lastAssistantMessageIsCompleteWithToolCalls,
  lastAssistantMessageIsCompleteWithApprovalResponses,
  readUIMessageStream,
} from "ai";
import { NodeChat, URL, TOOLS_URL, auth, newId, until, sessionItems, partName } from "./chat.mjs";

const transport = (base, agent, headers = auth) =>
  new DefaultChatTransport({ api: `${base}/v1/agents/${agent}/ai-sdk`, headers });

test("useChat gets the demo run as one assistant message: handoff, tool call, streamed answer", async () => {
  const id = newId("ai-demo");
  const chat = new NodeChat({ id, transport: transport(URL, "Triage") });
  await chat.sendMessage({ text: "What is the weather in Oslo?" });
  assert.equal(chat.status, "ready", String(chat.error));
  assert.equal(chat.messages.length, 2);
  const reply = chat.messages[1];
  assert.equal(reply.role, "assistant");
  assert.deepEqual(reply.parts.map(partName), [
    "agent Triage",
    "step-start",
    "tool-transfer_to_weather output-available",
    "agent Weather",
    "step-start",
    "tool-get_weather output-available",
    "step-start",
    "text done",
  ]);
  const weather = reply.parts.find((p) => p.type === "tool-get_weather");
  assert.deepEqual(weather.input, { city: "Oslo" });
  assert.match(weather.output, /Oslo/);
  const text = reply.parts.at(-1).text;
  assert.match(text, /^Here is the forecast you asked for: it is .* in Oslo/);
  assert.equal(reply.metadata.last_agent, "Weather");
  assert.equal(reply.metadata.usage.requests, 3);
  assert.ok(reply.metadata.usage.total_tokens > 0);
  assert.equal(reply.metadata.session_id, id);
  // The session on the server holds the same answer.
  const items = await sessionItems(URL, id);
  assert.equal(items.at(-1).content[0].text, text);

  // A second message in the same chat: the server has the history, the client sends it all.
  await chat.sendMessage({ text: "And a billing question?" });
  assert.equal(chat.status, "ready", String(chat.error));
  assert.equal(chat.messages.length, 4);
});

test("readUIMessageStream assembles the same message from the transport's chunks", async () => {
  const chunks = await transport(URL, "Triage").sendMessages({
    chatId: newId("ai-read"),
    messages: [{ id: "u1", role: "user", parts: [{ type: "text", text: "I have a question about my invoice" }] }],
    trigger: "submit-message",
    messageId: undefined,
    abortSignal: undefined,
  });
  let last;
  for await (const message of readUIMessageStream({ stream: chunks, terminateOnError: true })) last = message;
  assert.deepEqual(last.parts.map(partName), [
    "agent Triage",
    "step-start",
    "tool-transfer_to_billing output-available",
    "agent Billing",
    "step-start",
    "text done",
  ]);
  assert.match(last.parts.at(-1).text, /^Thanks for reaching Billing/);
});

test("a failing run ends in the chat's error state with the SDK exception", async () => {
  const errors = [];
  const chat = new NodeChat({
    id: newId("ai-fail"),
    transport: transport(TOOLS_URL, "Broken"),
    onError: (e) => errors.push(e),
  });
  await chat.sendMessage({ text: "hello" });
  assert.equal(chat.status, "error");
  assert.match(chat.error.message, /^ModelBehaviorError: /);
  assert.equal(errors.length, 1);
  const reply = chat.messages.at(-1);
  assert.equal(reply.role, "assistant");
  assert.deepEqual(reply.parts.map(partName), ["agent Broken"]);

  // readUIMessageStream reports it through onError too.
  const seen = [];
  const chunks = await transport(TOOLS_URL, "Broken").sendMessages({
    chatId: newId("ai-fail2"),
    messages: [{ id: "u1", role: "user", parts: [{ type: "text", text: "hello" }] }],
    trigger: "submit-message",
  });
  for await (const _ of readUIMessageStream({ stream: chunks, onError: (e) => seen.push(e.message) }));
  assert.equal(seen.length, 1);
  assert.match(seen[0], /^ModelBehaviorError: /);
});

test("a client-side tool is answered with addToolOutput and the run goes on in the same message", async () => {
  const id = newId("ai-tool");
  const asked = [];
  const chat = new NodeChat({
    id,
    transport: transport(TOOLS_URL, "Concierge"),
    sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithToolCalls,
    onToolCall: ({ toolCall }) => {
      if (toolCall.toolName !== "confirm_with_user") return;
      asked.push(toolCall.input.question);
      // Not awaited, as the AI SDK's docs say for onToolCall.
      chat.addToolOutput({ tool: "confirm_with_user", toolCallId: toolCall.toolCallId, output: "yes, book it" });
    },
  });
  await chat.sendMessage({ text: "A table for two at 8, please" });
  await until(
    () => chat.status === "ready" && chat.messages.at(-1).parts.some((p) => p.type === "text" && p.state === "done"),
    20000,
    "the answer after the tool output",
  );
  assert.deepEqual(asked, ["Book the table for two at 8?"]);
  assert.equal(chat.messages.length, 2, "one assistant message across both requests");
  const reply = chat.messages[1];
  assert.deepEqual(reply.parts.map(partName), [
    "agent Concierge",
    "step-start",
    "tool-confirm_with_user output-available",
    "step-start",
    "text done",
  ]);
  assert.equal(reply.parts[2].output, "yes, book it");
  assert.equal(reply.parts.at(-1).text, "Booked: a table for two at 8.");
  const items = await sessionItems(TOOLS_URL, id);
  assert.ok(items.some((i) => i.type === "function_call_output" && i.output === "yes, book it"));
});

for (const approved of [true, false]) {
  test(`a tool call that needs approval asks for it; addToolApprovalResponse ${approved ? "approves" : "rejects"} and the run goes on`, async () => {
    const id = newId(approved ? "ai-approve" : "ai-reject");
    const chat = new NodeChat({
      id,
      transport: transport(TOOLS_URL, "Banker"),
      sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithApprovalResponses,
    });
    await chat.sendMessage({ text: "Send 5 to Bob" });
    await until(
      () => chat.status === "ready" && chat.messages.at(-1).parts.some((p) => p.state === "approval-requested"),
      20000,
      "the approval request",
    );
    const asking = chat.messages.at(-1).parts.find((p) => p.state === "approval-requested");
    assert.equal(asking.type, "tool-wire_money");
    assert.deepEqual(asking.input, { amount: 5 });
    assert.equal(asking.approval.id, asking.toolCallId);
    await chat.addToolApprovalResponse({ id: asking.approval.id, approved, reason: approved ? undefined : "not today" });
    await until(
      () => chat.status === "ready" && chat.messages.at(-1).parts.some((p) => p.type === "text" && p.state === "done"),
      20000,
      "the answer after the decision",
    );
    assert.equal(chat.messages.length, 2, "one assistant message across both requests");
    const reply = chat.messages[1];
    const call = reply.parts.find((p) => p.type === "tool-wire_money");
    assert.equal(call.state, "output-available");
    assert.equal(call.output, approved ? "sent 5" : "not today");
    assert.equal(reply.parts.at(-1).text, "Done.");
    const items = await sessionItems(TOOLS_URL, id);
    assert.ok(items.some((i) => i.type === "function_call_output" && i.output === call.output));
  });
}

test("resumeStream replays the run in progress after a dropped response; 204 when none is", async () => {
  const id = newId("ai-resume");
  const user = { id: "u1", role: "user", parts: [{ type: "text", text: "What is the weather in Bergen?" }] };
  // The first response is dropped once the Weather agent takes over (a reload, a network
  // cut), well before the 20-delta answer is done.
  const abort = new AbortController();
  const first = await transport(URL, "Triage").sendMessages({
    chatId: id,
    messages: [user],
    trigger: "submit-message",
    abortSignal: abort.signal,
  });
  const reader = first.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    assert.ok(!done, "the stream ended before the handoff");
    if (value.type === "data-agent" && value.data.name === "Weather") break;
  }
  abort.abort();
  reader.releaseLock();

  const chat = new NodeChat({ id, transport: transport(URL, "Triage"), messages: [user] });
  await chat.resumeStream();
  assert.equal(chat.status, "ready", String(chat.error));
  assert.equal(chat.messages.length, 2);
  const parts = chat.messages[1].parts.map(partName);
  // The replay rebuilt the whole message once: nothing from the dropped response doubled.
  assert.deepEqual(parts, [
    "agent Triage",
    "step-start",
    "tool-transfer_to_weather output-available",
    "agent Weather",
    "step-start",
    "tool-get_weather output-available",
    "step-start",
    "text done",
  ]);
  assert.match(chat.messages[1].parts.at(-1).text, /^Here is the forecast you asked for: it is .* in Bergen/);

  // Nothing in progress now: the resume request gets 204 and the chat stays as it is.
  const r = await fetch(`${URL}/v1/agents/Triage/ai-sdk/${id}/stream`, { headers: auth });
  assert.equal(r.status, 204);
  await chat.resumeStream();
  assert.equal(chat.messages.length, 2);
});

test("a wrong key is refused with 401 and the chat shows the error", async () => {
  const chat = new NodeChat({
    id: newId("ai-auth"),
    transport: transport(URL, "Triage", { Authorization: "Bearer wrong" }),
  });
  await chat.sendMessage({ text: "hi" });
  assert.equal(chat.status, "error");
  assert.equal(chat.error.statusCode, 401);
  assert.match(chat.error.message, /"code":"unauthorized"/);
});
