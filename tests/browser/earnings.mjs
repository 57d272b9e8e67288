// Drives Debian's Chromium (playwright-core) through the earnings page of a running `tessera
// serve` whose gift-card provider and Stripe are local stand-ins: signs in with the patient's
// link, checks the page with axe-core and keeps screenshots (desktop and phone), picks a gift
// card from the catalog by its name, saves, and starts Stripe's onboarding with the button
// (following the stand-in's hosted page back to Tessera). Prints one JSON report on stdout;
// tests/e2e/payouts.rs asserts on it.
//
// Input (environment): TESSERA_URL, SIGN_IN_LINK (the operator's patient link), SHOTS,
// CHROMIUM (default /usr/bin/chromium).
import { axe, base, env, launch, overflows, screenshot } from "./common.mjs";

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
    images: await page.evaluate(() => [...document.images].map((i) => ({ src: i.getAttribute("src"), loaded: i.complete && i.naturalWidth > 0 }))),
  };
  report.pages.push(entry);
  return entry;
}

try {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  const page = await context.newPage();
  await Promise.all([page.waitForURL(base + "/me"), page.goto(env("SIGN_IN_LINK"))]);
  await record(page, "earnings-choices");

  // A gift card, picked by its name.
  await page.getByLabel("A gift card").check();
  await page.getByRole("radio", { name: /Amazon\.com/ }).check();
  await Promise.all([page.waitForURL(base + "/me"), page.getByRole("button", { name: "Save" }).click()]);
  report.actions.cardChecked = await page.getByRole("radio", { name: /Amazon\.com/ }).isChecked();

  // Direct payment: Stripe's onboarding (the stand-in's page) and back.
  await Promise.all([
    page.waitForURL(/\/me(#stripe-status)?$/),
    page.getByRole("button", { name: /direct payment with Stripe/ }).click(),
  ]);
  report.actions.stripeStatus = (await page.locator("#stripe-status").textContent()) || "";
  report.actions.directChecked = await page.getByLabel(/Paid to my bank account/).isChecked();
  await record(page, "earnings-direct");

  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  await phone.addCookies(await context.cookies());
  const small = await phone.newPage();
  await small.goto(base + "/me");
  await record(small, "earnings-phone");
  await phone.close();
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(report));
