// Console sessions across restarts, in a real headless Chromium (issue 24, items 2, 3, 5).
// Run by tests/console_browser.rs in phases around restarts of `tollgate up` on Redis:
//
//   node console_sessions.mjs sign-in CONSOLE_URL OPERATOR_KEY OUT_DIR
//     signs in twice (two browser contexts): the first session signs out from the page, the
//     second stays; both cookies are saved in OUT_DIR (signed-out.json, kept.json). Checks
//     that a pending approval's bidirectional controls show as marked code points.
//   node console_sessions.mjs expect CONSOLE_URL COOKIE_FILE STATUS
//     opens /console with the saved cookie and checks the answer's status (and, for 401,
//     that the sign-in form is shown).
//
// Prints one line per step; exits 1 on the first failed check.
import { readFileSync, writeFileSync } from "node:fs";
import puppeteer from "puppeteer-core";

const [mode, base, ...rest] = process.argv.slice(2);
const step = (text) => console.log(`step: ${text}`);
function check(ok, message) {
  if (!ok) throw new Error(`check failed: ${message}`);
}

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});

async function signIn(key) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  await page.goto(`${base}/console/login`);
  await page.type("#key", key);
  await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
  check(page.url().endsWith("/console"), `signed in: ${page.url()}`);
  const cookies = await page.cookies();
  const session = cookies.find((c) => c.name === "tg_console");
  check(session, "a session cookie");
  return { page, session };
}

let failed = false;
try {
  if (mode === "sign-in") {
    const [operatorKey, out] = rest;
    step("sign in twice");
    const first = await signIn(operatorKey);
    const second = await signIn(operatorKey);

    step("an argument's bidirectional controls show as marked code points (item 5)");
    await first.page.waitForSelector("li.approval", { timeout: 5000 });
    const marks = await first.page.$$eval("li.approval pre.arguments mark.control", (ms) => ms.map((m) => m.textContent));
    check(marks.includes("U+202E") && marks.includes("U+202C"), `marked: ${JSON.stringify(marks)}`);
    const shown = await first.page.$eval("li.approval pre.arguments", (pre) => pre.textContent);
    check(!shown.includes("\u202e") && !shown.includes("\u202c"), `no raw control in: ${JSON.stringify(shown)}`);
    check(shown.includes("metsys-ebuk"), `the text around it: ${shown}`);

    step("the first session signs out from the page");
    await Promise.all([first.page.waitForNavigation(), first.page.click("form.signout button")]);
    const again = await first.page.goto(`${base}/console`);
    check(again.status() === 401, `signed out: ${again.status()}`);
    writeFileSync(`${out}/signed-out.json`, JSON.stringify(first.session));
    writeFileSync(`${out}/kept.json`, JSON.stringify(second.session));
  } else if (mode === "expect") {
    const [cookieFile, status] = rest;
    const cookie = JSON.parse(readFileSync(cookieFile, "utf8"));
    step(`${cookieFile}: GET /console answers ${status}`);
    const page = await (await browser.createBrowserContext()).newPage();
    await page.setCookie({ name: cookie.name, value: cookie.value, url: base });
    const response = await page.goto(`${base}/console`);
    check(response.status() === Number(status), `status ${response.status()}, expected ${status}`);
    if (Number(status) === 401) check((await page.$("input#key")) !== null, "the sign-in form is shown");
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
  console.log("console session checks passed");
} catch (e) {
  failed = true;
  console.log(String(e && e.stack ? e.stack : e));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
