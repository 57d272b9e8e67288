// Drives Debian's Chromium (playwright-core, no downloaded browser) through Tessera's start
// page and the analyst and operator consoles of a running `tessera serve`, as each role and as
// nobody, runs axe-core on every page, takes screenshots, and does the consoles' main actions.
// It prints one JSON report on stdout; tests/e2e/consoles.rs asserts on it and checks the
// actions' effects through the API and Flight SQL on its own.
//
// Input (environment): TESSERA_URL, ANALYST_KEY, OPERATOR_KEY, PATIENT_KEY, SUSPEND_LICENSE,
// SHOTS (a folder for the screenshots), CHROMIUM (default /usr/bin/chromium).
import { join } from "node:path";
import { axe, base, env, launch, screenshot, shots } from "./common.mjs";

const report = { pages: [], refusals: [], actions: {} };

const browser = await launch();

// Visits `path`, records status, title, axe violations and a screenshot named `shot`.
async function visit(page, role, path, shot) {
  const response = await page.goto(base + path);
  const entry = {
    role,
    path,
    status: response.status(),
    title: await page.title(),
    h1: (await page.locator("h1").first().textContent()) || "",
    violations: await axe(page),
  };
  if (shot) {
    entry.screenshot = await screenshot(page, shot);
  }
  report.pages.push(entry);
  return entry;
}

const analystPages = ["/analyst", "/analyst/cohorts", "/analyst/keys"];
const operatorPages = [
  "/operator",
  "/operator/quarantine",
  "/operator/releases",
  "/operator/licenses",
  "/operator/audit",
  "/operator/payouts",
];

async function refusals(context, as) {
  const page = await context.newPage();
  for (const path of [...analystPages, ...operatorPages]) {
    const r = await page.goto(base + path);
    report.refusals.push({
      as,
      path,
      status: r.status(),
      signInForm: (await page.locator("form[action='/sign-in']").count()) > 0,
    });
  }
  await page.close();
}

// Clicks a form's button and waits for the page its POST answers with.
async function submit(page, action, button) {
  await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === action && r.request().method() === "POST"),
    page.click(button),
  ]);
  await page.waitForLoadState("load");
}

async function signIn(context, key) {
  const page = await context.newPage();
  await page.goto(base + "/sign-in");
  await page.fill("#key", key);
  await Promise.all([page.waitForURL(/\/(analyst|operator)/), page.click("button[type=submit]")]);
  return page;
}

const viewport = { width: 1200, height: 900 };

// The start page, and nobody signed in.
{
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const landing = await visit(page, "anyone", "/", "start-page");
  landing.links = await page.$$eval("main a", (as) => as.map((a) => a.getAttribute("href")));
  await visit(page, "anyone", "/sign-in", "sign-in");
  await refusals(context, "nobody");
  await context.close();
}

// A patient's key, presented as a bearer key and at the sign-in form.
{
  const context = await browser.newContext({
    viewport,
    extraHTTPHeaders: { Authorization: `Bearer ${env("PATIENT_KEY")}` },
  });
  await refusals(context, "patient");
  await context.close();
  const plain = await browser.newContext({ viewport });
  const page = await plain.newPage();
  await page.goto(base + "/sign-in");
  await page.fill("#key", env("PATIENT_KEY"));
  const [r] = await Promise.all([page.waitForResponse((r) => r.url().endsWith("/sign-in") && r.request().method() === "POST"), page.click("button[type=submit]")]);
  report.actions.patientSignIn = { status: r.status() };
  await plain.close();
}

// The analyst.
{
  const context = await browser.newContext({ viewport });
  const page = await signIn(context, env("ANALYST_KEY"));
  report.actions.analystLanded = new URL(page.url()).pathname;
  const home = await visit(page, "analyst", "/analyst", "analyst-catalog");
  home.snippets = await page.$$eval("pre[id^=snippet-]", (ps) => ps.map((p) => p.id));
  const release = await page.$eval("main table a[href^='/analyst/releases/']", (a) => a.getAttribute("href"));
  const license = await page.$eval("main table a[href^='/analyst/licenses/']", (a) => a.getAttribute("href"));
  const rel = await visit(page, "analyst", release, "analyst-release");
  rel.dictionaryTables = await page.locator("h3[id^=table-]").count();
  const lic = await visit(page, "analyst", license, "analyst-license");
  lic.verification = (await page.locator("#verification").textContent()) || "";
  lic.privacyBudget = (await page.locator("#privacy-budget").count()) > 0;
  await visit(page, "analyst", "/analyst/cohorts", "analyst-cohorts");
  await visit(page, "analyst", "/analyst/keys", "analyst-keys");
  // Issue a key, then revoke it from the list.
  await page.fill("#days", "7");
  await submit(page, "/analyst/keys", "form[action='/analyst/keys'] button[type=submit]");
  const issued = ((await page.locator("#new-key").textContent()) || "").trim();
  const issuedShot = join(shots, "analyst-key-issued.png");
  const issuedViolations = await axe(page);
  report.pages.push({ role: "analyst", path: "/analyst/keys (issued)", status: 201, title: await page.title(), h1: "", violations: issuedViolations });
  const id = issued.split("_")[1];
  await Promise.all([page.waitForURL(/\/analyst\/keys$/), page.click(`#key-${id} button`)]);
  report.actions.issuedKey = issued;
  report.actions.issuedKeyRowAfterRevoke = ((await page.locator(`#key-${id}`).textContent()) || "").trim();
  // An analyst on operator pages.
  for (const path of operatorPages) {
    const r = await page.goto(base + path);
    report.refusals.push({ as: "analyst", path, status: r.status(), signInForm: false });
  }
  await page.screenshot({ path: issuedShot.replace("issued", "refused-operator"), fullPage: true });
  await context.close();
}

// The operator.
{
  const context = await browser.newContext({ viewport });
  const page = await signIn(context, env("OPERATOR_KEY"));
  report.actions.operatorLanded = new URL(page.url()).pathname;
  await visit(page, "operator", "/operator", "operator-overview");
  await visit(page, "operator", "/operator/quarantine", "operator-quarantine");
  const releases = await visit(page, "operator", "/operator/releases", "operator-releases");
  releases.policies = await page.$$eval("#policy option", (os) => os.map((o) => o.textContent));
  await visit(page, "operator", "/operator/licenses", "operator-licenses");
  const license = env("SUSPEND_LICENSE");
  const detail = await visit(page, "operator", `/operator/licenses/${license}`, null);
  detail.verification = (await page.locator("#verification").textContent()) || "";
  await visit(page, "operator", "/operator/audit", "operator-audit");
  report.actions.auditChain = (await page.locator("#chain").textContent()) || "";
  await visit(page, "operator", "/operator/payouts", "operator-payouts");
  // Reconcile.
  await submit(page, "/operator/payouts/reconcile", "form[action='/operator/payouts/reconcile'] button");
  report.actions.reconciliation = ((await page.locator("#reconciliation").textContent()) || "").trim();
  // Suspend the analyst's license.
  await page.goto(base + "/operator/licenses");
  await Promise.all([
    page.waitForURL(/\/operator\/licenses$/),
    page.click(`#license-${license} button[aria-label='Suspend ${license}']`),
  ]);
  report.actions.suspendedStatus = ((await page.locator(`#license-${license} .status`).textContent()) || "").trim();
  await screenshot(page, "operator-license-suspended");
  // An operator on analyst pages.
  for (const path of analystPages) {
    const r = await page.goto(base + path);
    report.refusals.push({ as: "operator", path, status: r.status(), signInForm: false });
  }
  // Signing out forgets the key.
  await page.goto(base + "/operator");
  await Promise.all([page.waitForURL(base + "/"), page.click("form[action='/sign-out'] button")]);
  const after = await page.goto(base + "/operator");
  report.actions.afterSignOut = after.status();
  await context.close();
}

await browser.close();
process.stdout.write(JSON.stringify(report, null, 2) + "\n");
