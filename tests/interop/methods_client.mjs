// Reads resources and gets prompts through a Tollgate edge with the official MCP
// TypeScript SDK and prints what it saw as JSON on stdout (used by tests/mcp_methods.rs).
// Usage: node methods_client.mjs MCP_URL BEARER_KEY
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, key] = process.argv.slice(2);
if (!url || !key) {
  console.error("usage: node methods_client.mjs MCP_URL BEARER_KEY");
  process.exit(2);
}
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${key}` } },
});
const client = new Client({ name: "tollgate-methods", version: "1.0.0" });
await client.connect(transport);

// Each attempt is {ok: result} or {error: {code, message, data}}.
async function attempt(f) {
  try {
    return { ok: await f() };
  } catch (e) {
    return { error: { code: e.code, message: e.message, data: e.data } };
  }
}

const resources = (await client.listResources()).resources.map((r) => r.uri);
const prompts = (await client.listPrompts()).prompts.map((p) => p.name);
const document = await attempt(() => client.readResource({ uri: "demo://resource/static/document/architecture.md" }));
const dynamic = [];
for (let i = 0; i < 3; i++) {
  dynamic.push(await attempt(() => client.readResource({ uri: "demo://resource/dynamic/text/1" })));
}
const simple = await attempt(() => client.getPrompt({ name: "simple-prompt" }));
const paris = await attempt(() => client.getPrompt({ name: "args-prompt", arguments: { city: "Paris" } }));
const london = await attempt(() => client.getPrompt({ name: "args-prompt", arguments: { city: "London" } }));
const completable = await attempt(() =>
  client.getPrompt({ name: "completable-prompt", arguments: { department: "Engineering", name: "Alice" } }),
);
await transport.terminateSession();
await client.close();
console.log(JSON.stringify({ resources, prompts, document, dynamic, simple, paris, london, completable }));
