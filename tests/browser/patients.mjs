// Drives Debian's Chromium (playwright-core) through the patients' pages of a running
// `tessera serve`: signs in with an e-mailed link (the confirmation page, then its button),
// visits every page with axe-core and a screenshot (desktop and phone widths), shares and stops
// sharing for a purpose with the consent centre's buttons, downloads the FHIR bundle with the
// download page's link, answers a survey with conditional items, adds a passkey and signs in
// with it (Chromium's virtual authenticator), signs out, and finally deletes the account. Prints one JSON report on stdout; tests/e2e/me.rs
// asserts on it.
//
// Input (environment): TESSERA_URL, SIGN_IN_LINK (an unused e-mailed link), SHOTS (a folder
// for screenshots and the download), CHROMIUM (default /usr/bin/chromium).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { axe, base, env, launch, screenshot, shots } from "./common.mjs";

const report = { pages: [], actions: {} };

const browser = await launch();

async function record(page, status, shot) {
  const entry = {
    path: new URL(page.url()).pathname,
    status,
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

async function visit(page, path, shot) {
  const response = await page.goto(base + path);
  return record(page, response.status(), shot);
}

try {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 }, acceptDownloads: true });
  const page = await context.newPage();

  // Not signed in: the sign-in page, and a page that asks to sign in.
  await visit(page, "/me/sign-in", "patient-sign-in");
  await visit(page, "/me/data", null);

  // The e-mailed link: a page with a button (mail scanners do not use the link up).
  const link = env("SIGN_IN_LINK");
  const confirm = await page.goto(link);
  await record(page, confirm.status(), "patient-link-confirm");
  await Promise.all([page.waitForURL(base + "/me"), page.getByRole("button", { name: "Continue" }).click()]);
  report.actions.signedIn = new URL(page.url()).pathname;
  await record(page, 200, "patient-earnings");

  for (const [path, shot] of [
    ["/me/data", "patient-data"],
    ["/me/consent", "patient-consent"],
    ["/me/share", "patient-share"],
    ["/s/a-link-someone-shared", "share-viewer"],
    ["/me/download", "patient-download"],
    ["/me/account", "patient-account"],
  ]) {
    await visit(page, path, shot);
  }

  // The consent centre: share for natural history (all data), then stop.
  await page.goto(base + "/me/consent");
  const section = page.locator("section", { has: page.locator("#h-research-natural_history") });
  await Promise.all([page.waitForURL(base + "/me/consent"), section.getByRole("button", { name: /^(Share|Update what I share)$/ }).click()]);
  report.actions.afterShare = (await page.locator("#state-research-natural_history").textContent()) || "";
  const stop = page.locator("section", { has: page.locator("#h-research-natural_history") }).getByRole("button", { name: /^Stop sharing/ });
  await Promise.all([page.waitForURL(base + "/me/consent"), stop.click()]);
  report.actions.afterStop = (await page.locator("#state-research-natural_history").textContent()) || "";
  report.actions.historyRows = await page.locator("#history + table tr").count();

  // A survey with conditional items: "Yes" and Save open "How many seizures?"; Submit credits
  // the study's incentive, which the earnings page then shows.
  await page.goto(base + "/me/surveys");
  await Promise.all([page.waitForLoadState("load"), page.getByRole("link", { name: /^Answer/ }).first().click()]);
  await record(page, 200, "patient-survey");
  report.actions.surveyBefore = await page.getByLabel("How many seizures?").count();
  await page.getByRole("group", { name: /Did you have any seizures/ }).getByLabel("Yes").check();
  await Promise.all([page.waitForLoadState("load"), page.getByRole("button", { name: "Save" }).click()]);
  report.actions.surveyAfterSave = await page.getByLabel("How many seizures?").count();
  await page.getByLabel("How many seizures?").fill("1");
  await Promise.all([page.waitForLoadState("load"), page.getByRole("button", { name: "Save" }).click()]);
  await page.getByLabel("Mild: I stayed aware").check();
  await page.getByLabel(/^Medication/).first().fill("Diazepam");
  await record(page, 200, "patient-survey-filled");
  await Promise.all([page.waitForURL(/\/me\/surveys\?done=/), page.getByRole("button", { name: "Submit" }).click()]);
  report.actions.surveyDone = (await page.locator("[role=status]").first().textContent()) || "";
  await page.goto(base + "/me");
  report.actions.earningsAfterSurvey = (await page.locator("main").textContent()) || "";

  // The download page's link gives the FHIR bundle as a file.
  await page.goto(base + "/me/download");
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("link", { name: "Everything, as a FHIR R4 Bundle" }).click(),
  ]);
  const saved = join(shots, "download-bundle.json");
  await download.saveAs(saved);
  const bundle = JSON.parse(readFileSync(saved, "utf8"));
  report.actions.download = {
    file: saved,
    suggested: download.suggestedFilename(),
    resourceType: bundle.resourceType,
    entries: bundle.entry.length,
    types: bundle.entry.reduce((m, e) => ((m[e.resource.resourceType] = (m[e.resource.resourceType] || 0) + 1), m), {}),
  };

  // The same pages at a phone's width: nothing is cut off, and axe still passes.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  await phone.addCookies(await context.cookies());
  const small = await phone.newPage();
  for (const [path, shot] of [
    ["/me", "patient-earnings-phone"],
    ["/me/data", "patient-data-phone"],
    ["/me/consent", "patient-consent-phone"],
  ]) {
    const entry = await visit(small, path, shot);
    entry.overflow = await small.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  }
  await phone.close();

  // Passkeys, with Chromium's virtual authenticator (Chrome DevTools Protocol): add one on the
  // account page, sign out, sign in with it.
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: { protocol: "ctap2", transport: "internal", hasResidentKey: true, hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true },
  });
  await page.goto(base + "/me/account");
  await page.locator("#passkey-add").click();
  // Either the page reloads with the passkey listed, or the script says what went wrong.
  await page.waitForFunction(
    () => document.querySelector("form[action='/me/passkeys/remove']") || (document.getElementById("passkey-status") || {}).textContent,
    null,
    { timeout: 20000 },
  );
  report.actions.passkeyStatus = (await page.locator("#passkey-status").textContent()) || "";
  report.actions.passkeysListed = await page.locator("form[action='/me/passkeys/remove']").count();
  await record(page, 200, "patient-account-passkey");
  await Promise.all([page.waitForURL(base + "/me/sign-in"), page.getByRole("button", { name: "Sign out", exact: true }).click()]);
  await Promise.all([page.waitForURL(base + "/me"), page.locator("#passkey-sign-in").click()]);
  report.actions.passkeySignIn = new URL(page.url()).pathname;
  await page.goto(base + "/me/account");
  report.actions.accountAfterPasskey = (await page.locator("main").textContent()) || "";

  // Sign out: the session is over.
  await Promise.all([page.waitForURL(base + "/me/sign-in"), page.getByRole("button", { name: "Sign out", exact: true }).click()]);
  const after = await page.goto(base + "/me/data");
  report.actions.afterSignOut = after.status();

  // Delete: signed in again with the passkey, the account page leads to the deletion page,
  // which says what goes and what is kept; a ticked box and DELETE typed confirm it.
  await page.goto(base + "/me/sign-in");
  await Promise.all([page.waitForURL(base + "/me"), page.locator("#passkey-sign-in").click()]);
  await page.goto(base + "/me/account");
  await Promise.all([page.waitForURL(base + "/me/delete"), page.getByRole("link", { name: "delete everything Tessera holds about you" }).click()]);
  await record(page, 200, "patient-delete");
  await page.getByLabel(/I understand/).check();
  await page.getByLabel("Type DELETE to confirm").fill("DELETE");
  await Promise.all([page.waitForLoadState("load"), page.getByRole("button", { name: "Delete everything" }).click()]);
  await record(page, 200, "patient-deleted");
  report.actions.deleted = (await page.locator("main").textContent()) || "";
  const gone = await page.goto(base + "/me/data");
  report.actions.afterDelete = gone.status();
} finally {
  await browser.close();
}

process.stdout.write(JSON.stringify(report));
