// An MCP client built on the official TypeScript SDK, driven line by line, so a test can
// make calls that wait for an operator and act while they wait.
//
// Usage: node held_client.mjs MCP_URL BEARER_KEY
// stdin, one JSON object per line:
//   {"op": "call", "tag": "a", "name": "k8s_scale", "arguments": {...}, "progress": true}
//   {"op": "close"}
// stdout, one JSON object per line:
//   {"ready": true}                                        once connected
//   {"tag": "a", "progress": {"progress": 0, "message": "..."}}   for each progress notification
//   {"tag": "a", "result": {...}, "ms": 1234}              when the call is answered
//   {"tag": "a", "error": "..."}                           when the call failed
import { createInterface } from "node:readline";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, key] = process.argv.slice(2);
if (!url || !key) {
  console.error("usage: node held_client.mjs MCP_URL BEARER_KEY");
  process.exit(2);
}
const say = (message) => process.stdout.write(JSON.stringify(message) + "\n");

const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${key}` } },
});
const client = new Client({ name: "tollgate-held-calls", version: "1.0.0" });
await client.connect(transport);
say({ ready: true });

const pending = new Set();
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const command = JSON.parse(line);
  if (command.op === "close") break;
  if (command.op !== "call") {
    say({ error: `unknown op ${command.op}` });
    continue;
  }
  const { tag, name, arguments: args, progress } = command;
  const started = Date.now();
  const options = { timeout: 120000 };
  if (progress) {
    options.onprogress = (p) => say({ tag, progress: p });
    options.resetTimeoutOnProgress = true;
  }
  const call = client
    .callTool({ name, arguments: args }, undefined, options)
    .then((result) => say({ tag, result, ms: Date.now() - started }))
    .catch((e) => say({ tag, error: String(e) }));
  pending.add(call);
  call.finally(() => pending.delete(call));
}
await Promise.allSettled([...pending]);
await client.close();
