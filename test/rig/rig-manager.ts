// Porthole's manager in browser mode (dist/main/web/browser-mode.js) as a child process of a
// rig scenario, driven through its HTTP API (POST /api/call) and its event WebSocket (console
// streams). Its diagnostics (stderr: journal repairs and the like) are kept and logged.
import type { ChildProcess } from 'node:child_process';
import WebSocket from 'ws';
import type { VmSummary } from '../../main/api/contract';
import { SESSION_HEADER, type ServerMessage } from '../../main/api/wire';
import { until } from './l1-usb';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What starting a manager needs: how to spawn it (ctx.spawn in a scenario) and where its files go. */
export interface ManagerLaunch {
  spawn(command: string, args: string[], opts: { env: NodeJS.ProcessEnv }): ChildProcess;
  log(line: string): void;
  /** The project checkout holding dist/ (/project in L1). */
  projectDir: string;
  /** XDG_CONFIG_HOME (the VM library) and XDG_DATA_HOME (the USB journal) for the manager. */
  configHome: string;
  dataHome: string;
}

/** The manager in browser mode in L1, driven through its HTTP API; its diagnostics are kept. */
export class RigManager {
  readonly lines: string[] = [];
  private origin = '';
  private token = '';
  private ws: WebSocket | null = null;
  private session = '';
  private nextSub = 1;
  readonly exited: Promise<string>;

  private constructor(launch: ManagerLaunch, readonly label: string, readonly proc: ChildProcess) {
    this.exited = new Promise((resolve) => proc.once('exit', (code, sig) => resolve(sig ?? `code ${code}`)));
    const collect = (d: Buffer) => {
      for (const l of d.toString().split('\n')) {
        if (!l.trim()) continue;
        this.lines.push(l);
        launch.log(`${label}| ${l}`);
      }
    };
    proc.stdout!.on('data', collect);
    proc.stderr!.on('data', collect);
  }

  static async start(launch: ManagerLaunch, label: string): Promise<RigManager> {
    const env = { ...process.env, XDG_CONFIG_HOME: launch.configHome, XDG_DATA_HOME: launch.dataHome, PORTHOLE_FORBID_KOFFI_VIEW: '1' };
    const proc = launch.spawn(process.execPath, [`${launch.projectDir}/dist/main/web/browser-mode.js`, '--port', '0'], { env });
    const m = new RigManager(launch, label, proc);
    const url = await until(`${label} to print its address`, 60000, () => {
      if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`${label} ended at start: ${m.lines.join(' | ')}`);
      const hit = m.lines.map((l) => /open (http:\/\/\S+)/.exec(l)).find((x) => x !== null);
      return hit ? new URL(hit[1]) : null;
    });
    m.origin = url.origin;
    m.token = url.searchParams.get('token') ?? '';
    return m;
  }

  get pid(): number {
    return this.proc.pid!;
  }

  async call<T>(method: string, ...args: unknown[]): Promise<T> {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (this.session) headers[SESSION_HEADER] = this.session;
    const res = await fetch(`${this.origin}/api/call?token=${encodeURIComponent(this.token)}`, {
      method: 'POST', headers, body: JSON.stringify({ method, args }),
    });
    const body = await res.json() as { ok: true; value: T } | { ok: false; error: { code: string; message: string } };
    if (!body.ok) throw new Error(`${this.label}: ${method} failed (${body.error.code}): ${body.error.message}`);
    return body.value;
  }

  /** The VM's firmware debug console (port 0x402), appended to `sink` as it comes. */
  async watchDebugcon(id: string, sink: { text: string }): Promise<void> {
    if (this.ws === null) {
      const ws = new WebSocket(`${this.origin.replace('http:', 'ws:')}/api/events?token=${encodeURIComponent(this.token)}`);
      this.ws = ws;
      this.session = await new Promise<string>((resolve, reject) => {
        ws.once('error', reject);
        ws.on('message', (raw) => {
          const m = JSON.parse(raw.toString()) as ServerMessage<string>;
          if (m.type === 'hello') resolve(m.session);
        });
      });
    }
    const sub = `debugcon-${this.nextSub++}`;
    this.ws.on('message', (raw) => {
      const m = JSON.parse(raw.toString()) as ServerMessage<string>;
      if (m.type === 'console' && m.subscription === sub) sink.text += Buffer.from(m.data, 'base64').toString('latin1');
    });
    await this.call('openConsole', id, 'debugcon', sub);
  }

  close(): void {
    this.ws?.terminate();
    this.ws = null;
  }

  /** Polls getVm until the VM is stopped or crashed; returns its state then (or the last one seen after `timeoutMs`). */
  async vmAtRest(id: string, timeoutMs: number): Promise<string> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const { state } = await this.call<VmSummary>('getVm', id);
      if (state === 'stopped' || state === 'crashed' || Date.now() > end) return state;
      await sleep(100);
    }
  }

  /** The manager's diagnostic that it gave `name` back after process `pid` died. */
  saidGaveBack(name: string, pid: number): boolean {
    return this.lines.some((l) => l.includes(`USB: gave ${name} back to the host`) && l.includes(`(process ${pid})`));
  }
}

