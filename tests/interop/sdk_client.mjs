// Talks to a Tollgate edge with the official MCP TypeScript SDK and prints what it saw as
// JSON on stdout. Usage: node sdk_client.mjs MCP_URL BEARER_KEY
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, key] = process.argv.slice(2);
if (!url || !key) {
  console.error("usage: node sdk_client.mjs MCP_URL BEARER_KEY");
  process.exit(2);
}
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${key}` } },
});
const client = new Client({ name: "tollgate-interop", version: "1.0.0" });
await client.connect(transport);
const listed = await client.listTools();
const pauses = [];
for (let i = 0; i < 11; i++) {
  pauses.push(await client.callTool({ name: "k8s_rollout_pause", arguments: { namespace: "default", name: "web" } }));
}
const denied = await client.callTool({ name: "k8s_get_pods", arguments: { namespace: "default" } });
const sessionId = transport.sessionId;
await transport.terminateSession();
await client.close();
console.log(JSON.stringify({ server: client.getServerVersion(), sessionId, tools: listed.tools, pauses, denied }));
