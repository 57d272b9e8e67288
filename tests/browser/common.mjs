// What the browser scripts share: their environment (TESSERA_URL, SHOTS, CHROMIUM), Debian's
// Chromium through playwright-core, axe-core's WCAG 2.1 AA and best-practice checks, and
// full-page screenshots kept for people to look at. tests/e2e copies this file next to the
// script it runs.
import { readFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

export const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
export const base = env("TESSERA_URL").replace(/\/$/, "");
export const shots = env("SHOTS");
mkdirSync(shots, { recursive: true });

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
}

// axe-core's violations on the page as it stands.
export async function axe(page) {
  await page.addScriptTag({ content: axeSource });
  const result = await page.evaluate(async () =>
    // eslint-disable-next-line no-undef
    axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"] } }),
  );
  return result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length }));
}

// A full-page screenshot named `shot`; its file.
export async function screenshot(page, shot) {
  const file = join(shots, `${shot}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

// Whether the page is wider than the window (it would scroll sideways on a phone).
export const overflows = (page) => page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
