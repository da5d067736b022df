// The dashboard in a real browser: Debian's chromium driven by playwright-core against a real
// sidecar with a real (relay) agent. The agent appears, a denial arrives live, and with actions
// enabled a capability revoked from the page is shown revoked. A screenshot is kept in
// test-artifacts/dashboard.png.
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { connectAll, Harness, rpcError, toolCap } from '../runner/inproc.js';

const CHROMIUM = '/usr/bin/chromium';
const skip = process.getuid?.() !== 0 ? 'needs root (the sidecar creates cgroups and confines)' : !existsSync(CHROMIUM) ? `${CHROMIUM} is not installed (apt-get install chromium; .ci/run installs it)` : '';
if (skip) console.log(`test/monitor/dashboard-browser.test.ts skipped: ${skip}`);

const ARTIFACTS = join(import.meta.dirname, '../../test-artifacts');

let h: Harness | undefined;
let closeBrowser: (() => Promise<void>) | undefined;
afterEach(async () => {
  await closeBrowser?.();
  closeBrowser = undefined;
  await h?.cleanup();
  h = undefined;
});

describe.skipIf(skip !== '')('the dashboard in chromium', () => {
  it('shows the agent, a denial as it happens, and a capability revoked from the page', async () => {
    const { chromium } = await import('playwright-core');
    h = new Harness('dash');
    const ctl = h.control('planner');
    const cfg = h.config([{ id: 'planner', control: ctl, capabilities: [toolCap(['echo'])] }], {
      tools: [{ name: 'echo', command: ['echo', '{text}'], args: { text: { type: 'string' } } }, { name: 'rm', command: ['/bin/true'] }],
      dashboard: { listen: '127.0.0.1:0', actions: true },
    });
    const notices: string[] = [];
    const s = await h.start(cfg, { output: () => {}, notice: (l) => notices.push(l) });
    const url = s.monitoring?.dashboardUrl;
    expect(url, notices.join('\n')).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/\?token=/);
    expect(notices.some((n) => n.includes(url!))).toBe(true);
    const planner = (await connectAll([ctl])).get('planner')!;
    const { capabilities } = (await planner.conn.call('capabilities.list', {})) as { capabilities: { id: string }[] };
    const cap = capabilities[0]!.id;

    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    closeBrowser = () => browser.close();
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(url!);
    // The token went into a cookie; the address bar no longer holds it.
    expect(page.url()).not.toContain('token=');
    await page.waitForSelector('[data-agent="planner"][data-state="running"]', { timeout: 15_000 });
    await page.waitForSelector(`[data-cap="${cap}"] .badge:text("live")`, { timeout: 15_000 });

    // A denial made now reaches the open page through the event stream.
    expect((await rpcError(planner.conn.call('tools.invoke', { tool: 'rm', args: {}, capability: cap }))).data).toMatchObject({ code: 'E_TOOL_NOT_ALLOWED' });
    await page.waitForSelector('[data-decision="access_denied"][data-code="E_TOOL_NOT_ALLOWED"]', { timeout: 15_000 });

    // What an agent controls reaches the page as text, never as markup.
    const hostile = '<img src=x onerror="document.body.dataset.pwned=1">';
    await rpcError(planner.conn.call('tools.invoke', { tool: hostile, args: {}, capability: cap }));
    await page.waitForSelector('[data-decision="access_denied"][data-code="E_UNKNOWN_TOOL"]', { timeout: 15_000 });
    expect(await page.textContent('[data-decision="access_denied"][data-code="E_UNKNOWN_TOOL"]')).toContain(hostile);
    // A string, evaluated in the page (this project's TypeScript has no DOM types).
    expect(await page.evaluate("[document.querySelectorAll('#decisions img').length, document.body.dataset.pwned ?? null]")).toEqual([0, null]);

    // Revoke from the page; the capability is marked revoked, and the kernel agrees.
    await page.click(`[data-cap="${cap}"] button[data-action="revoke"]`);
    await page.waitForSelector(`[data-cap="${cap}"] .badge:text("revoked")`, { timeout: 15_000 });
    expect(s.kernel.isRevoked(cap)).toBe(true);
    // The background verify of the live log (a child process) found the chain intact.
    await page.reload();
    await page.waitForSelector('#chain[data-verify="passed"]', { timeout: 30_000 });
    expect(await page.textContent('#chain')).toMatch(/chain intact/);
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard.png'), fullPage: true });
    expect(errors).toEqual([]);
  }, 90_000);
});
