// Shared by the Node tests: the servers under test (started by tests/frontends.rs), and
// useChat's chat outside React: the `ai` package's AbstractChat with a plain state object,
// as @ai-sdk/react's Chat is AbstractChat with React state.

import { AbstractChat } from "ai";

export const URL = process.env.CALLBOARD_URL;
export const TOOLS_URL = process.env.CALLBOARD_TOOLS_URL;
export const KEY = process.env.CALLBOARD_KEY;
if (!URL || !TOOLS_URL || !KEY) {
  throw new Error(
    "CALLBOARD_URL, CALLBOARD_TOOLS_URL and CALLBOARD_KEY must be set: run these through " +
      "`cargo test --test frontends`, which starts the servers",
  );
}

export const auth = { Authorization: `Bearer ${KEY}` };

let n = 0;
export const newId = (p) => `${p}-${process.pid}-${Date.now()}-${++n}`;

class PlainState {
  constructor(messages = []) {
    this.messages = messages;
    this.status = "ready";
    this.error = undefined;
  }
  pushMessage(m) {
    this.messages = this.messages.concat(m);
  }
  popMessage() {
    this.messages = this.messages.slice(0, -1);
  }
  replaceMessage(i, m) {
    this.messages = [...this.messages.slice(0, i), this.snapshot(m), ...this.messages.slice(i + 1)];
  }
  snapshot(x) {
    return structuredClone(x);
  }
}

export class NodeChat extends AbstractChat {
  constructor({ messages, ...init }) {
    super({ ...init, state: new PlainState(messages) });
  }
}

/** Waits until `cond()` holds, polling; fails after `ms`. */
export async function until(cond, ms = 20000, what = "condition") {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The session's items on the server. */
export async function sessionItems(base, sessionId) {
  const r = await fetch(`${base}/v1/sessions/${encodeURIComponent(sessionId)}/items`, { headers: auth });
  if (!r.ok) throw new Error(`items: HTTP ${r.status}`);
  return (await r.json()).items;
}

/** A part's short name: its type, plus the agent or tool it names. */
export function partName(p) {
  if (p.type === "data-agent") return `agent ${p.data.name}`;
  if (p.type.startsWith("tool-")) return `${p.type} ${p.state}`;
  if (p.type === "text") return `text ${p.state}`;
  return p.type;
}
