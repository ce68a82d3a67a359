// A task's whole lifecycle through a Tollgate endpoint with the official MCP TypeScript SDK
// (2025-11-25 tasks): a task-augmented call streamed to its result, then the task looked up
// by its id, and the same id tried by a second client with another grant's key. Prints what
// it saw as JSON. Both clients list their tasks too. Used by tests/aggregate.rs against server-everything's
// `simulate-research-query` (a tool that only runs as a task).
// Usage: node tasks_client.mjs MCP_URL BEARER_KEY OTHER_BEARER_KEY TOOL
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CallToolResultSchema } from "@modelcontextprotocol/sdk/types.js";

const [url, key, otherKey, tool] = process.argv.slice(2);
if (!url || !key || !otherKey || !tool) {
  console.error("usage: node tasks_client.mjs MCP_URL BEARER_KEY OTHER_BEARER_KEY TOOL");
  process.exit(2);
}

function connect(bearer) {
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${bearer}` } },
  });
  const client = new Client({ name: "tollgate-tasks", version: "1.0.0" }, { capabilities: {} });
  return client.connect(transport).then(() => client);
}

async function attempt(f) {
  try {
    return { ok: await f() };
  } catch (e) {
    return { error: { code: e.code, message: e.message } };
  }
}

const out = { messages: [] };
const client = await connect(key);
const stream = client.experimental.tasks.callToolStream(
  { name: tool, arguments: { topic: "tollgate" } },
  CallToolResultSchema,
  { task: { ttl: 60000 } },
);
for await (const message of stream) {
  if (message.type === "taskCreated") {
    out.taskId = message.task.taskId;
  } else if (message.type === "result") {
    out.result = message.result;
  } else if (message.type === "error") {
    out.error = { code: message.error.code, message: message.error.message };
  }
  out.messages.push(message.type);
}
if (out.taskId) {
  out.own = await attempt(() => client.experimental.tasks.getTask(out.taskId));
  out.listed = await attempt(async () => (await client.experimental.tasks.listTasks()).tasks.map((t) => t.taskId));
  const other = await connect(otherKey);
  out.otherListed = await attempt(async () => (await other.experimental.tasks.listTasks()).tasks.map((t) => t.taskId));
  out.other = await attempt(() => other.experimental.tasks.getTask(out.taskId));
  out.otherResult = await attempt(() => other.experimental.tasks.getTaskResult(out.taskId, CallToolResultSchema));
  await other.close();
}
await client.close();
console.log(JSON.stringify(out));
