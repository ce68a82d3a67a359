// The console's Tools page in a real headless Chromium (Debian's `chromium`, driven by
// puppeteer-core), with an agent on the official MCP TypeScript SDK. Run by tests/pinning.rs,
// which starts `tollgate up` in front of an upstream whose k8s_scale definition changed after
// it was approved (pinning = "enforce"), and passes:
//
//   node console_pins.mjs CONSOLE_URL MCP_URL AGENT_KEY OPERATOR_KEY SCREENSHOT_DIR
//
// Prints one line per step; exits 1 on the first failed check.
import puppeteer from "puppeteer-core";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [base, mcpUrl, agentKey, operatorKey, shots] = process.argv.slice(2);
if (!shots) {
  console.error("usage: node console_pins.mjs CONSOLE_URL MCP_URL AGENT_KEY OPERATOR_KEY SCREENSHOT_DIR");
  process.exit(2);
}
const step = (text) => console.log(`step: ${text}`);
function check(ok, message) {
  if (!ok) throw new Error(`check failed: ${message}`);
}

async function agent() {
  const transport = new StreamableHTTPClientTransport(new URL(mcpUrl), {
    requestInit: { headers: { Authorization: `Bearer ${agentKey}` } },
  });
  const client = new Client({ name: "pins-agent", version: "1.0.0" });
  await client.connect(transport);
  return client;
}
const toolNames = async (client) => (await client.listTools()).tools.map((t) => t.name);
const textOf = (result) => (result.content || []).map((c) => c.text || "").join("\n");

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});
let failed = false;
try {
  step("the agent does not see the changed tool, and its call is refused");
  const client = await agent();
  check(!(await toolNames(client)).includes("k8s_scale"), "k8s_scale is hidden before review");
  const refused = await client.callTool({ name: "k8s_scale", arguments: { namespace: "web", replicas: 3 } });
  check(refused.isError === true && textOf(refused).includes("changed since it was approved"), `refused: ${textOf(refused)}`);

  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 1100 });
  const problems = [];
  page.on("pageerror", (e) => problems.push(String(e)));

  step("sign in and open the Tools page");
  await page.goto(`${base}/console/login`);
  await page.type("#key", operatorKey);
  await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
  await page.goto(`${base}/console/tools`);
  check((await page.title()).startsWith("Tools"), `title: ${await page.title()}`);

  step("the pending definition is shown side by side with the approved one");
  const entry = await page.$("li.pin");
  check(entry !== null, "a pending definition is listed");
  const what = await page.$eval("li.pin .what", (e) => e.textContent);
  check(what.includes("k8s_scale") && what.includes("k8s"), `entry: ${what}`);
  const removed = await page.$$eval("li.pin table.diff td.removed", (cells) => cells.map((c) => c.textContent));
  const added = await page.$$eval("li.pin table.diff td.added", (cells) => cells.map((c) => c.textContent));
  check(removed.some((t) => t.includes("Scale a deployment (nothing is changed).")), `removed: ${removed}`);
  check(added.some((t) => t.includes("IMPORTANT: before scaling")), `added: ${added}`);
  check(added.some((t) => t.includes('"note"')), "the new input field is marked added");
  step("the hidden bidirectional override is shown as a marked code point");
  const marks = await page.$$eval("li.pin table.diff mark.control", (m) => m.map((e) => e.textContent));
  check(marks.includes("U+202E"), `marks: ${marks}`);
  const text = await page.$eval("li.pin table.diff", (t) => t.textContent);
  check(!text.includes("\u202e"), "the override itself is never in the page text");
  await page.screenshot({ path: `${shots}/console-tools.png`, fullPage: true });

  step("approve it with a reason");
  await page.type("li.pin input[name=reason]", "reviewed: the note field is harmless here");
  await Promise.all([page.waitForNavigation(), page.click("li.pin button.approve")]);
  const notice = await page.$eval("p.notice", (e) => e.textContent);
  check(notice.includes("approved"), `notice: ${notice}`);
  check((await page.$("li.pin")) === null, "nothing awaits review any more");
  const settled = await page.$$eval("table.pins-settled tr", (rows) => rows.map((r) => r.textContent));
  check(settled.some((r) => r.includes("k8s_scale") && r.includes("approved") && r.includes("reviewed: the note")), `rows: ${settled}`);

  step("the agent sees the tool again, and its call goes through");
  let listed = false;
  for (let i = 0; i < 40 && !listed; i++) {
    listed = (await toolNames(client)).includes("k8s_scale");
    if (!listed) await new Promise((r) => setTimeout(r, 100));
  }
  check(listed, "k8s_scale is listed after the approval");
  const scaled = await client.callTool({ name: "k8s_scale", arguments: { namespace: "web", replicas: 3 } });
  check(!scaled.isError && textOf(scaled).includes("scaled web to 3"), `call: ${textOf(scaled)}`);
  await client.close();
  check(problems.length === 0, `page errors: ${problems}`);
  step("done");
} catch (e) {
  console.log(String(e));
  failed = true;
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
