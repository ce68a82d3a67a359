// The operators' console in a real headless Chromium (Debian's `chromium`, driven by
// puppeteer-core), with agents on the official MCP TypeScript SDK. Run by
// tests/console_browser.rs, which starts `tollgate up` and passes:
//
//   node console_browser.mjs CONSOLE_URL MCP_URL AGENT_KEY OPERATOR_KEY SCREENSHOT_DIR EXPLAIN_FILE
//
// EXPLAIN_FILE holds `tollgate policy explain`'s output for k8s_scale as grant "a" on server
// "k8s"; the page's answer must be the same. Prints one line per step; exits 1 on the first
// failed check.
import { readFileSync } from "node:fs";
import puppeteer from "puppeteer-core";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [base, mcpUrl, agentKey, operatorKey, shots, explainFile] = process.argv.slice(2);
if (!explainFile) {
  console.error("usage: node console_browser.mjs CONSOLE_URL MCP_URL AGENT_KEY OPERATOR_KEY SCREENSHOT_DIR EXPLAIN_FILE");
  process.exit(2);
}
const step = (text) => console.log(`step: ${text}`);
function check(ok, message) {
  if (!ok) throw new Error(`check failed: ${message}`);
}

async function agent(name) {
  const transport = new StreamableHTTPClientTransport(new URL(mcpUrl), {
    requestInit: { headers: { Authorization: `Bearer ${agentKey}` } },
  });
  const client = new Client({ name, version: "1.0.0" });
  await client.connect(transport);
  return client;
}
const textOf = (result) => (result.content || []).map((c) => c.text || "").join("\n");

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});
let failed = false;
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  const problems = [];
  page.on("pageerror", (e) => problems.push(String(e)));
  page.on("console", (m) => {
    // Refused requests (401, 403) are expected here; anything else is a problem.
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push(m.text());
  });

  step("a page without a session is refused with the sign-in form");
  let response = await page.goto(`${base}/console`);
  check(response.status() === 401, `GET /console without a session: ${response.status()}`);
  check((await page.$("input#key")) !== null, "the sign-in form is shown");

  step("a wrong key is refused");
  await page.goto(`${base}/console/login`);
  await page.screenshot({ path: `${shots}/console-sign-in.png` });
  await page.type("#key", "not-a-key");
  await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
  const refusedPage = await page.content();
  check(refusedPage.includes("unknown operator key"), `the error is shown: ${refusedPage.slice(0, 2000)}`);

  step("sign in");
  await page.type("#key", operatorKey);
  await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
  check(new URL(page.url()).pathname === "/console", `signed in: ${page.url()}`);
  const cookies = await page.cookies();
  const session = cookies.find((c) => c.name === "tg_console");
  check(session && session.httpOnly && session.sameSite === "Strict", `session cookie: ${JSON.stringify(session)}`);
  check(!(await page.evaluate(() => document.cookie)).includes("tg_console"), "scripts cannot read the cookie");
  await page.waitForFunction(() => document.getElementById("live").textContent === "live", { timeout: 5000 });

  step("a call held on the edge appears in the queue within a second");
  const alice = await agent("console-browser-agent");
  const hostile = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">';
  const started = Date.now();
  const held = alice.callTool(
    { name: "k8s_scale", arguments: { namespace: "web", name: hostile, replicas: 3 } },
    undefined,
    { timeout: 60000 },
  );
  await page.waitForSelector("li.approval", { timeout: 5000 });
  const appeared = Date.now() - started;
  console.log(`approval appeared in the page ${appeared} ms after the call was made`);
  check(appeared <= 1000, `appeared after ${appeared} ms`);

  step("arguments with markup render inert");
  const shown = await page.$eval("li.approval pre.arguments", (pre) => pre.textContent);
  check(shown.includes("<script>window.__pwned = 1</script>"), `arguments shown as text: ${shown}`);
  check((await page.evaluate(() => window.__pwned)) === undefined, "no injected script ran");
  check((await page.$$("li.approval script, li.approval img")).length === 0, "no element was created from the arguments");
  await page.screenshot({ path: `${shots}/console-approvals.png`, fullPage: true });

  step("a new approval never moves the one under the pointer (issue 24, item 4)");
  await page.hover("li.approval button.approve");
  const topBefore = await page.$eval("li.approval button.approve", (b) => b.getBoundingClientRect().top);
  const extra = alice.callTool(
    { name: "k8s_scale", arguments: { namespace: "web", name: "extra", replicas: 31 } },
    undefined,
    { timeout: 60000 },
  );
  extra.catch(() => {});
  await page.waitForFunction(() => document.querySelectorAll("li.approval").length === 2, { timeout: 5000 });
  const topAfter = await page.$eval("li.approval button.approve", (b) => b.getBoundingClientRect().top);
  check(topAfter === topBefore, `the entry under the pointer stayed put: ${topBefore} -> ${topAfter}`);
  const order = await page.$$eval("li.approval pre.arguments", (pres) => pres.map((p) => p.textContent));
  check(order.length === 2 && order[1].includes("extra"), `the new one is below: ${JSON.stringify(order)}`);

  step("approve in the page, confirmed with the call shown whole: the held call goes through");
  await page.type("li.approval input[name=reason]", "scale-up planned in CHG-1234");
  await Promise.all([page.waitForNavigation(), page.click("li.approval button.approve")]);
  const confirmation = await page.content();
  check(confirmation.includes("Approve this call?"), "approving asks to confirm");
  const whole = await page.$eval("section.confirm pre.arguments", (pre) => pre.textContent);
  check(whole.includes("<script>window.__pwned = 1</script>"), `the arguments shown whole, as text: ${whole}`);
  check((await page.evaluate(() => document.activeElement && document.activeElement.textContent)) === "Confirm approval",
    "the confirm button has the focus (Enter confirms)");
  await Promise.all([page.waitForNavigation(), page.keyboard.press("Enter")]);
  check((await page.content()).includes("Approved"), "the page confirms");
  const approved = await held;
  check(!approved.isError, `the call went through: ${JSON.stringify(approved)}`);
  check(textOf(approved).includes("replicas"), `the upstream answered: ${textOf(approved)}`);

  step("deny with a reason, by keyboard only: the reason reaches the client");
  await page.waitForFunction(() => document.getElementById("live").textContent === "live", { timeout: 5000 });
  const second = alice.callTool(
    { name: "k8s_scale", arguments: { namespace: "web", name: "api", replicas: 30 } },
    undefined,
    { timeout: 60000 },
  );
  await page.waitForFunction(
    () => [...document.querySelectorAll("li.approval pre.arguments")].some((p) => p.textContent.includes("30")),
    { timeout: 5000 },
  );
  // The oldest first: the new call is the last entry.
  await page.focus("li.approval:last-of-type input[name=reason]");
  await page.keyboard.type("change freeze until Monday");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Tab");
  const focused = await page.evaluate(() => document.activeElement && document.activeElement.textContent);
  check(focused === "Deny", `Tab from the reason reaches Approve, then Deny: ${focused}`);
  await Promise.all([page.waitForNavigation(), page.keyboard.press("Enter")]);
  const denied = await second;
  check(denied.isError === true, `denied: ${JSON.stringify(denied)}`);
  check(textOf(denied).includes("change freeze until Monday"), `the reason: ${textOf(denied)}`);
  const resolved = await page.$eval("table.resolved", (t) => t.textContent);
  check(resolved.includes("change freeze until Monday") && resolved.includes("denied"), `recently resolved: ${resolved}`);

  step("decisions appear live with their verdicts, and the filters work");
  await page.waitForFunction(() => document.getElementById("live").textContent === "live", { timeout: 5000 });
  const bob = await agent("console-browser-agent-2");
  await bob.callTool({ name: "k8s_rollout_pause", arguments: { namespace: "web", name: "api" } });
  await bob.callTool({ name: "k8s_delete_namespace", arguments: { namespace: "prod" } });
  // Rows of earlier decisions may still be arriving (the page reloaded after the deny):
  // wait for these two calls' rows themselves.
  await page.waitForFunction(
    () =>
      document.querySelector('tr.decision[data-tool="k8s_rollout_pause"]') &&
      document.querySelector('tr.decision[data-tool="k8s_delete_namespace"]'),
    { timeout: 5000 },
  );
  const verdictOf = (tool) =>
    page.$eval(`tr.decision[data-tool="${tool}"]`, (row) => row.dataset.verdict);
  check((await verdictOf("k8s_rollout_pause")) === "ALLOW", "rollout_pause allowed");
  check((await verdictOf("k8s_delete_namespace")) === "DENY", "delete_namespace denied");
  await page.select("#filters select[name=verdict]", "DENY");
  const visible = await page.$$eval("tr.decision:not([hidden])", (rows) => rows.map((r) => r.dataset.verdict));
  check(visible.length > 0 && visible.every((v) => v === "DENY"), `only denials shown: ${visible}`);
  await page.select("#filters select[name=verdict]", "");
  await page.type("#filters input[name=tool]", "rollout");
  const tools = await page.$$eval("tr.decision:not([hidden])", (rows) => rows.map((r) => r.dataset.tool));
  check(tools.length > 0 && tools.every((t) => t.includes("rollout")), `only rollout tools: ${tools}`);
  await page.click('tr.decision[data-tool="k8s_rollout_pause"] button.more');
  const details = await page.$eval('tr.decision[data-tool="k8s_rollout_pause"] + tr.detail', (row) =>
    row.hidden ? "" : row.textContent,
  );
  check(details.includes("Rule") && details.includes("Arguments SHA-256"), `details: ${details}`);
  await page.screenshot({ path: `${shots}/console-decisions.png`, fullPage: true });

  step("counters show their use, read from the store");
  await page.goto(`${base}/console/counters`);
  await page.type(".explain-form input[name=name]", "k8s_rollout_pause");
  await page.type(".explain-form input[name=server]", "k8s");
  await page.type(".explain-form input[name=grant]", "a");
  await Promise.all([page.waitForNavigation(), page.click(".explain-form button[type=submit]")]);
  const use = await page.$eval("table.counters tbody", (t) => t.textContent);
  check(use.includes("1 of 10 used"), `counter use: ${use}`);
  await page.screenshot({ path: `${shots}/console-counters.png`, fullPage: true });

  step("the explain form answers like the CLI");
  await page.goto(`${base}/console/policy`);
  await page.type(".explain-form input[name=name]", "k8s_scale");
  await page.type(".explain-form input[name=server]", "k8s");
  await page.type(".explain-form input[name=grant]", "a");
  await Promise.all([page.waitForNavigation(), page.click(".explain-form button[type=submit]")]);
  const answer = await page.$eval("pre.explain", (pre) => pre.textContent);
  const expected = readFileSync(explainFile, "utf8").trimEnd();
  check(answer === expected, `explain:\n${answer}\n--- expected (CLI):\n${expected}`);
  await page.screenshot({ path: `${shots}/console-policy.png`, fullPage: true });

  step("the candidate policy page lists the calls it would answer otherwise");
  await page.goto(`${base}/console/candidate`);
  let changes = "";
  for (let i = 0; i < 50 && !changes.includes("k8s_scale"); i++) {
    await new Promise((r) => setTimeout(r, 200));
    await page.goto(`${base}/console/candidate`);
    changes = await page.$eval("main", (m) => m.textContent);
  }
  check(changes.includes("k8s_scale") && changes.includes("scaling moves to the change process"), `candidate page: ${changes}`);
  await page.screenshot({ path: `${shots}/console-candidate.png`, fullPage: true });

  step("a state change without the CSRF token is refused");
  const forged = await page.evaluate(async () => {
    const r = await fetch("/console/approvals/apr_00000000000000000000000000000000", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: "decision=approve&reason=x",
    });
    return r.status;
  });
  check(forged === 403, `POST without a CSRF token: ${forged}`);

  step("sign out");
  await Promise.all([page.waitForNavigation(), page.click("form.signout button")]);
  check(new URL(page.url()).pathname === "/console/login", `signed out: ${page.url()}`);
  const after = await page.evaluate(async () => (await fetch("/console/events")).status);
  check(after === 401, `events after sign-out: ${after}`);
  await page.setCookie(session);
  const replayed = await page.evaluate(async () => (await fetch("/console")).status);
  check(replayed === 401, `the old cookie after sign-out: ${replayed}`);

  check(problems.length === 0, `no script errors in the page: ${problems.join("; ")}`);
  await alice.close();
  await bob.close();
  console.log("all console browser checks passed");
} catch (e) {
  failed = true;
  console.error(String(e && e.stack ? e.stack : e));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
