// Answers a server's sampling request through a Tollgate edge with the official MCP
// TypeScript SDK, and prints what it saw as JSON on stdout (used by tests/stdio.rs).
// Usage: node sampling_client.mjs MCP_URL BEARER_KEY
// The server (server-everything) asks for a sampling while `trigger-sampling-request` runs;
// this client answers with a fixed text, which must come back in the tool's result.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CreateMessageRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const [url, key] = process.argv.slice(2);
if (!url || !key) {
  console.error("usage: node sampling_client.mjs MCP_URL BEARER_KEY");
  process.exit(2);
}
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${key}` } },
});
const client = new Client({ name: "tollgate-sampling", version: "1.0.0" }, { capabilities: { sampling: {} } });
const asked = [];
client.setRequestHandler(CreateMessageRequestSchema, async (request) => {
  asked.push(request.params.messages[0].content.text);
  return { role: "assistant", model: "tollgate-test-model", content: { type: "text", text: "sampled through Tollgate" } };
});
await client.connect(transport);
const result = await client.callTool({ name: "trigger-sampling-request", arguments: { prompt: "hello", maxTokens: 5 } });
await transport.terminateSession();
await client.close();
console.log(JSON.stringify({ asked, result }));
