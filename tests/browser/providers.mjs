// Drives Debian's Chromium (playwright-core) through the Providers page of a running `tessera
// serve` whose identity provider (Persona) and the patient's hospital (a SMART on FHIR server)
// are local stand-ins: signs in with the patient's link, verifies identity through the
// stand-in's hosted flow and back, finds the hospital in the directory and connects it
// (through the stand-in's authorization page and back), waits for the first fetch, prepares a
// letter for a provider without an API and downloads it, and opens the public scorecard.
// Every page is checked with axe-core and kept as a screenshot (desktop and phone). Prints one
// JSON report on stdout; tests/e2e/providers.rs asserts on it.
//
// Input (environment): TESSERA_URL, SIGN_IN_LINK, SHOTS, CHROMIUM (default /usr/bin/chromium).
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { axe, base, env, launch, overflows, screenshot, shots } from "./common.mjs";

const report = { pages: [], actions: {} };
const browser = await launch();

async function record(page, shot) {
  const violations = await axe(page);
  const file = await screenshot(page, shot);
  const entry = {
    path: new URL(page.url()).pathname,
    title: await page.title(),
    violations,
    screenshot: file,
    overflow: await overflows(page),
  };
  report.pages.push(entry);
  return entry;
}

const section = (page, id) => page.locator(`section[aria-labelledby="${id}"]`).innerText();

try {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  const page = await context.newPage();
  await Promise.all([page.waitForURL(base + "/me"), page.goto(env("SIGN_IN_LINK"))]);
  await page.getByRole("link", { name: "Providers" }).click();
  await page.waitForURL(base + "/me/providers");
  report.actions.identityBefore = await section(page, "identity");
  report.actions.connectBefore = await section(page, "connect");
  await record(page, "providers-unverified");

  // Identity: the stand-in's hosted flow, and back (a cross-site return, reloaded same-site).
  await Promise.all([
    page.waitForURL(/\/me\/providers(#identity)?$/),
    page.getByRole("button", { name: "Verify my identity" }).click(),
  ]);
  report.actions.identityAfter = await section(page, "identity");

  // The directory, and the hospital's sign-in (the stand-in signs the patient in).
  await page.getByLabel("Hospital, clinic or town").fill("Riverside");
  await Promise.all([page.waitForURL(/q=Riverside/), page.getByRole("button", { name: "Search" }).click()]);
  report.actions.found = await page.locator("ul.providers").innerText();
  await record(page, "providers-search");
  await Promise.all([
    page.waitForURL(/\/me\/providers(#connected)?$/),
    page.getByRole("button", { name: "Connect Riverside General Hospital" }).click(),
  ]);
  // The first fetch runs in the background: reload until it is done.
  for (let i = 0; i < 60; i++) {
    report.actions.connected = await section(page, "connected");
    if (/last fetched/.test(report.actions.connected)) break;
    await page.waitForTimeout(500);
    await page.reload();
  }
  await record(page, "providers-connected");

  // A provider without an API: a letter to sign.
  await page.getByLabel("Provider's name").fill("Lakeside Family Practice");
  await Promise.all([
    page.waitForURL(/\/me\/providers(#letters)?$/),
    page.getByRole("button", { name: "Prepare a letter" }).click(),
  ]);
  report.actions.letters = await section(page, "letters");
  const href = await page.getByRole("link", { name: "Letter to sign (PDF)" }).getAttribute("href");
  const pdf = await page.request.get(base + href);
  report.actions.letterType = pdf.headers()["content-type"];
  const letter = join(shots, "letter.pdf");
  writeFileSync(letter, await pdf.body());
  report.actions.letter = letter;
  await record(page, "providers-letter");

  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  await phone.addCookies(await context.cookies());
  const small = await phone.newPage();
  await small.goto(base + "/me/providers");
  await record(small, "providers-phone");
  await phone.close();

  // The published scorecard needs no sign-in.
  const anyone = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  const pub = await anyone.newPage();
  await pub.goto(base + "/providers/scorecard");
  report.actions.scorecard = await pub.locator("main").innerText();
  await record(pub, "providers-scorecard");
  await anyone.close();
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(report));
