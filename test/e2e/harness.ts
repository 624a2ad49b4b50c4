// End-to-end harness: the real manager and browser-mode web server in this process (on a
// temporary XDG_CONFIG_HOME), and Debian's Chromium driven by playwright-core.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium, type Browser, type BrowserContext, type Locator, type Page } from 'playwright-core';
import { libraryDir } from '../../main/manager/library';
import { RENDERER_DIR } from '../../main/manager/app-paths';
import { VmManager } from '../../main/manager/manager';
import type { HostRoots } from '../../main/host/pci-inventory';
import { nodeVmProcessLauncher, type VmProcessHandle, type VmProcessLauncher } from '../../main/manager/process-launcher';
import { startWebServer, type WebServer } from '../../main/web/server';
import { guest, kvmSkipReason, repoRoot } from '../helpers/vm';

export const CHROMIUM = '/usr/bin/chromium';
/** In the rig's L1 the checkout is read-only; screenshots go to the run's folder on the host. */
export const ARTIFACTS_DIR = process.env.PORTHOLE_TEST_ARTIFACTS ?? path.join(repoRoot, 'test-artifacts');

/**
 * In the rig's L1 (test/rig/scenarios/kvm-tests.ts) Chromium runs on the rig host, which
 * reaches this process's server through ports forwarded to PORTHOLE_E2E_LISTEN.
 */
interface RemoteBrowser { wsEndpoint: string; ports: number[]; listen: string }

function remoteBrowser(): RemoteBrowser | null {
  const wsEndpoint = process.env.PORTHOLE_E2E_BROWSER_WS;
  if (!wsEndpoint) return null;
  const ports = (process.env.PORTHOLE_E2E_PORTS ?? '').split(',').map(Number).filter((n) => n > 0);
  const listen = process.env.PORTHOLE_E2E_LISTEN ?? '';
  if (!ports.length || !listen) throw new Error('PORTHOLE_E2E_BROWSER_WS needs PORTHOLE_E2E_PORTS and PORTHOLE_E2E_LISTEN');
  return { wsEndpoint, ports, listen };
}

/** Relays connections from `listen`:port to the server on 127.0.0.1:port. */
async function relay(listen: string, port: number): Promise<net.Server> {
  const relayServer = net.createServer((inbound) => {
    const outbound = net.connect(port, '127.0.0.1');
    inbound.pipe(outbound).pipe(inbound);
    const end = () => { inbound.destroy(); outbound.destroy(); };
    inbound.on('error', end);
    outbound.on('error', end);
    inbound.on('close', end);
    outbound.on('close', end);
  });
  await new Promise<void>((resolve, reject) => {
    relayServer.once('error', reject);
    relayServer.listen(port, listen, () => resolve());
  });
  return relayServer;
}

async function startServerOnFreePort(remote: RemoteBrowser, start: (port: number) => Promise<WebServer>): Promise<{ server: WebServer; relayServer: net.Server }> {
  let last: Error | null = null;
  for (const port of remote.ports) {
    let server: WebServer | null = null;
    try {
      server = await start(port);
      return { server, relayServer: await relay(remote.listen, port) };
    } catch (e) {
      last = e as Error;
      await server?.close();
    }
  }
  throw new Error(`no free port among ${remote.ports.join(', ')} for the web server: ${last?.message}`);
}

const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync',
];

/** Why the browser tests cannot run here, or null. A missing UI build is a failure, not a skip. */
export function browserSkipReason(): string | null {
  if (!process.env.PORTHOLE_E2E_BROWSER_WS && !fs.existsSync(CHROMIUM)) return `${CHROMIUM} is missing: run scripts/fixtures.sh (it installs Debian's chromium)`;
  return kvmSkipReason();
}

/** Why a browser test that starts no VM (so needs no KVM) cannot run here, or null. */
export function chromiumSkipReason(): string | null {
  if (!process.env.PORTHOLE_E2E_BROWSER_WS && !fs.existsSync(CHROMIUM)) return `${CHROMIUM} is missing: run scripts/fixtures.sh (it installs Debian's chromium)`;
  return null;
}

/** Why a test needing these guest fixtures must skip, or null. */
export function fixtureSkipReason(...names: string[]): string | null {
  const missing = names.filter((n) => !fs.existsSync(guest(n)));
  return missing.length ? `missing fixture ${missing.map((n) => `build/guests/${n}.bin`).join(', ')}: run scripts/fixtures.sh` : null;
}

export interface LaunchedVmProcess {
  label: string;
  handle: VmProcessHandle;
}

export interface E2eApp {
  page: Page;
  context: BrowserContext;
  server: WebServer;
  manager: VmManager;
  /** Every VM process the manager started, in order. */
  processes: LaunchedVmProcess[];
  /** Server-side log lines and browser console errors (printed when a test fails). */
  diagnostics: string[];
  close(): Promise<void>;
}

export interface E2eOptions {
  /** Writes files into the (empty) library directory before the manager loads it. */
  prepareLibrary?: (dir: string) => void;
  /** The host's sysfs and /proc as the manager sees them (PCI assignment tests give a fake tree). */
  hostRoots?: HostRoots;
  /** VM processes other than real ones (a test that scripts a VM process needs no KVM). */
  launcher?: VmProcessLauncher;
}

export async function startE2eApp(options: E2eOptions = {}): Promise<E2eApp> {
  if (!fs.existsSync(path.join(RENDERER_DIR, 'index.html'))) {
    throw new Error(`the UI is not built (${RENDERER_DIR}/index.html is missing): run npm run build`);
  }
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-e2e-'));
  const configHome = path.join(scratch, 'config');
  const diagnostics: string[] = [];
  const processes: LaunchedVmProcess[] = [];
  const baseLauncher = options.launcher ?? nodeVmProcessLauncher();
  const library = libraryDir({ ...process.env, XDG_CONFIG_HOME: configHome });
  if (options.prepareLibrary) {
    fs.mkdirSync(library, { recursive: true });
    options.prepareLibrary(library);
  }
  const manager = new VmManager({
    libraryDir: library,
    launcher: (label) => {
      const handle = baseLauncher(label);
      processes.push({ label, handle });
      return handle;
    },
    mode: 'browser',
    appVersion: 'e2e',
    log: (line) => diagnostics.push(`manager: ${line}`),
    ...(options.hostRoots === undefined ? {} : { hostRoots: options.hostRoots }),
  });
  manager.load();
  const remote = remoteBrowser();
  const start = (port: number) => startWebServer({
    backend: manager, rendererDir: RENDERER_DIR, port, log: (line) => diagnostics.push(`web: ${line}`),
  });
  const { server, relayServer } = remote ? await startServerOnFreePort(remote, start) : { server: await start(0), relayServer: null };
  let context: BrowserContext | null = null;
  let browser: Browser | null = null;
  const contextOptions = {
    viewport: { width: 1280, height: 720 },
    // The console's Copy buttons write to the clipboard; the tests read it back.
    permissions: ['clipboard-read', 'clipboard-write'],
  };
  try {
    if (remote) {
      // The browser server takes connections for its own loopback name only.
      browser = await chromium.connect(remote.wsEndpoint, { headers: { host: `127.0.0.1:${new URL(remote.wsEndpoint).port}` } });
      context = await browser.newContext(contextOptions);
    } else {
      context = await chromium.launchPersistentContext(path.join(scratch, 'chromium-profile'), {
        executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, ...contextOptions,
      });
    }
    const page = context.pages()[0] ?? await context.newPage();
    page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') diagnostics.push(`browser ${m.type()}: ${m.text()}`); });
    page.on('pageerror', (e) => diagnostics.push(`browser page error: ${e.message}`));
    await page.goto(server.url);
    await page.getByRole('heading', { name: 'Virtual machines' }).waitFor();
    const ctx = context;
    return {
      page, context: ctx, server, manager, processes, diagnostics,
      async close() {
        await ctx.close().catch(() => undefined);
        await browser?.close().catch(() => undefined);
        await manager.shutdownAll('force-off').catch(() => undefined);
        relayServer?.close();
        await server.close();
        fs.rmSync(scratch, { recursive: true, force: true });
      },
    };
  } catch (e) {
    await context?.close().catch(() => undefined);
    await browser?.close().catch(() => undefined);
    relayServer?.close();
    await server.close();
    fs.rmSync(scratch, { recursive: true, force: true });
    throw e;
  }
}

/**
 * Runs a test body on a freshly loaded page (whatever the last test left open); on failure
 * the error also carries what the server and the browser said.
 */
export async function withDiagnostics(app: E2eApp, body: () => Promise<void>): Promise<void> {
  await app.page.reload();
  await app.page.getByRole('heading', { name: 'Virtual machines' }).waitFor();
  try {
    await body();
  } catch (e) {
    if (e instanceof Error) e.message += `\n--- diagnostics ---\n${app.diagnostics.slice(-60).join('\n')}`;
    throw e;
  }
}

export async function screenshot(page: Page, name: string): Promise<string> {
  fs.mkdirSync(ARTIFACTS_DIR, { recursive: true });
  const file = path.join(ARTIFACTS_DIR, `${name}.png`);
  await page.screenshot({ path: file });
  return file;
}

/** Polls `read` until `test` accepts its value; fails with the last value after `timeoutMs`. */
export async function waitUntil<T>(what: string, read: () => Promise<T>, test: (v: T) => boolean, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  for (;;) {
    last = await read();
    if (test(last)) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last value: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The text on the console's screen (xterm's DOM rows), non-breaking spaces as spaces. */
export async function consoleText(page: Page): Promise<string> {
  const rows = page.locator('.console-terminal .xterm-rows');
  if (await rows.count() === 0) return '';
  return (await rows.innerText()).replace(/\u00a0/g, ' ');
}

export function waitForConsole(page: Page, pattern: RegExp, timeoutMs = 60_000): Promise<string> {
  return waitUntil(`console text ${pattern}`, () => consoleText(page), (t) => pattern.test(t), timeoutMs);
}

/** The state badge on the open VM page. */
export function pageBadge(page: Page): Locator {
  return page.locator('.vm-page .vm-title-row .badge');
}

/**
 * Waits until the open VM shows `label` and no action is in flight any more (buttons and
 * shortcuts are disabled while one is, e.g. "Pausing…" until main has answered).
 */
export function waitForBadge(page: Page, label: string, timeoutMs = 60_000): Promise<string> {
  return waitUntil(`the VM to be ${label} and idle`, async () => {
    const badge = ((await pageBadge(page).textContent()) ?? '').trim();
    const busy = await page.locator('.vm-page .vm-title-row .busy').count();
    return busy ? `${badge} (busy)` : badge;
  }, (t) => t === label, timeoutMs);
}

export function libraryItem(page: Page, name: string): Locator {
  return page.getByRole('option').filter({ has: page.locator('.library-name', { hasText: new RegExp(`^${escapeRegExp(name)}$`) }) });
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Form controls, buttons, tabs and options on the page that have no accessible name
 * (no label, aria-label, aria-labelledby or text), as short HTML snippets.
 */
export async function unnamedControls(page: Page): Promise<string[]> {
  return page.evaluate(`(() => {
    const out = [];
    for (const el of document.querySelectorAll('input, select, textarea, button, [role="tab"], [role="option"]')) {
      const labelled = (el.getAttribute('aria-label') || '').trim() !== ''
        || (el.getAttribute('aria-labelledby') || '').split(/\\s+/).some((id) => (document.getElementById(id)?.textContent || '').trim() !== '')
        || (el.labels && Array.from(el.labels).some((l) => l.textContent.trim() !== ''))
        || (!el.matches('input, select, textarea') && el.textContent.trim() !== '');
      if (!labelled) out.push(el.outerHTML.slice(0, 160));
    }
    return out;
  })()`);
}

/** True when the page needs no horizontal scrolling. */
export async function fitsWidth(page: Page): Promise<boolean> {
  return page.evaluate('document.documentElement.scrollWidth <= window.innerWidth');
}
