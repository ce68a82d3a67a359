// Uses Tollgate's aggregated endpoint /mcp with the official MCP TypeScript SDK: lists
// across pages and servers, calls routed by prefix, a resource read, a prompt, and a
// sampling request from an upstream answered by this client. Prints what it saw as JSON.
// Usage: node aggregate_client.mjs MCP_URL BEARER_KEY
// The session is left open (its id is printed) so the test can continue it elsewhere.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CreateMessageRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const [url, key] = process.argv.slice(2);
if (!url || !key) {
  console.error("usage: node aggregate_client.mjs MCP_URL BEARER_KEY");
  process.exit(2);
}
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${key}` } },
});
const client = new Client({ name: "tollgate-aggregate", version: "1.0.0" }, { capabilities: { sampling: {} } });
client.setRequestHandler(CreateMessageRequestSchema, async () => ({
  role: "assistant",
  model: "tollgate-test-model",
  content: { type: "text", text: "sampled through the aggregated endpoint" },
}));

async function attempt(f) {
  try {
    return { ok: await f() };
  } catch (e) {
    return { error: { code: e.code, message: e.message, data: e.data } };
  }
}

await client.connect(transport);
const tools = [];
let pages = 0;
let cursor;
do {
  const page = await client.listTools(cursor ? { cursor } : {});
  tools.push(...page.tools.map((t) => t.name));
  cursor = page.nextCursor;
  pages++;
} while (cursor && pages < 50);
const prompts = (await client.listPrompts()).prompts.map((p) => p.name);
const resources = (await client.listResources()).resources.map((r) => r.uri);
const pauses = [];
for (let i = 0; i < 4; i++) {
  pauses.push(await client.callTool({ name: "k8s__k8s_rollout_pause", arguments: { namespace: "default", name: "web" } }));
}
const echo = await client.callTool({ name: "evs__echo", arguments: { message: "through stdio" } });
const secret = await attempt(() => client.readResource({ uri: "demo://resource/static/document/architecture.md" }));
const features = await attempt(() => client.readResource({ uri: "demo://resource/static/document/features.md" }));
const prompt = await attempt(() => client.getPrompt({ name: "ev__simple-prompt" }));
const sampling = await client.callTool({
  name: "ev__trigger-sampling-request",
  arguments: { prompt: "hello", maxTokens: 5 },
});
console.log(
  JSON.stringify({
    server: client.getServerVersion(),
    sessionId: transport.sessionId,
    pages,
    tools,
    prompts,
    resources,
    pauses,
    echo,
    secret,
    features,
    prompt,
    sampling,
  }),
);
process.exit(0);
