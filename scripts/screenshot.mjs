// Screenshot of a pre-annotated task in the Label Studio UI (headless Chromium via playwright-core).
// usage: node scripts/screenshot.mjs <ls_url> <email> <password> <project> <task> <out.png>
import { chromium } from "playwright-core";

const [url, email, password, project, task, out] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
await page.goto(`${url}/user/login/`);
await page.fill('input[name="email"]', email);
await page.fill('input[name="password"]', password);
await Promise.all([page.waitForNavigation(), page.click('button[type="submit"], input[type="submit"]')]);
await page.goto(`${url}/projects/${project}/data?task=${task}`);
await page.waitForTimeout(8000);
await page.screenshot({ path: out });
await browser.close();
