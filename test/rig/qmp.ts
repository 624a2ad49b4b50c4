// A QMP client for the runner: QEMU connects its monitor chardev to a UNIX socket the runner
// listens on; commands are sent one at a time with ids, and events are kept for waiters.
import fs from 'node:fs';
import net from 'node:net';
import { jsonLineSplitter } from './control';

export class QmpError extends Error {}

interface QmpEvent { event: string; data?: Record<string, unknown>; }

export class QmpServerClient {
  private socket: net.Socket | null = null;
  private ready: Promise<void>;
  private markReady!: () => void;
  private nextId = 1;
  private readonly pending = new Map<string, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private readonly events: QmpEvent[] = [];
  private readonly eventWaiters = new Set<{ match: (e: QmpEvent) => boolean; resolve: (e: QmpEvent) => void }>();

  private constructor(private readonly server: net.Server) {
    this.ready = new Promise((r) => { this.markReady = r; });
    server.on('connection', (s) => {
      this.socket = s;
      s.on('error', () => { /* QEMU went away */ });
      s.on('close', () => {
        for (const p of this.pending.values()) p.reject(new QmpError('QEMU closed its QMP connection'));
        this.pending.clear();
      });
      s.on('data', jsonLineSplitter((m) => this.onMessage(m), () => { /* not JSON */ }));
    });
  }

  static async listen(socketPath: string): Promise<QmpServerClient> {
    try { fs.unlinkSync(socketPath); } catch { /* not there */ }
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => { server.off('error', reject); resolve(); });
    });
    return new QmpServerClient(server);
  }

  private onMessage(m: Record<string, unknown>): void {
    if ('QMP' in m) {
      // The greeting: leave capabilities negotiation mode before any command.
      this.socket!.write(JSON.stringify({ execute: 'qmp_capabilities', id: 'caps' }) + '\n');
      return;
    }
    if (m.id === 'caps') { this.markReady(); return; }
    if (typeof m.event === 'string') {
      const ev = m as unknown as QmpEvent;
      this.events.push(ev);
      if (this.events.length > 200) this.events.shift();
      for (const w of [...this.eventWaiters]) if (w.match(ev)) { this.eventWaiters.delete(w); w.resolve(ev); }
      return;
    }
    const id = String(m.id);
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if ('error' in m) {
      const err = m.error as { class?: string; desc?: string };
      p.reject(new QmpError(`${err.desc ?? 'error'}${err.class ? ` (${err.class})` : ''}`));
    } else p.resolve(m.return);
  }

  /** Runs one QMP command; rejects with QEMU's own error text. */
  async execute(command: string, args?: Record<string, unknown>, timeoutMs = 15000): Promise<unknown> {
    await withTimeout(this.ready, timeoutMs, 'QEMU did not open its QMP connection');
    const id = `c${this.nextId++}`;
    return withTimeout(new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.socket!.write(JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id }) + '\n');
    }), timeoutMs, `QMP ${command} got no answer`);
  }

  /** Resolves with the first event (already seen since `since`, or still to come) that matches. */
  waitEvent(match: (e: QmpEvent) => boolean, timeoutMs: number, what: string): Promise<QmpEvent> {
    const seen = this.events.find(match);
    if (seen) { this.events.splice(this.events.indexOf(seen), 1); return Promise.resolve(seen); }
    let waiter: { match: (e: QmpEvent) => boolean; resolve: (e: QmpEvent) => void };
    const p = new Promise<QmpEvent>((resolve) => { waiter = { match, resolve }; this.eventWaiters.add(waiter); });
    return withTimeout(p, timeoutMs, what).finally(() => this.eventWaiters.delete(waiter));
  }

  /** Forgets queued events that match, so a later wait sees only new ones. */
  dropEvents(match: (e: QmpEvent) => boolean): void {
    for (let i = this.events.length - 1; i >= 0; i--) if (match(this.events[i])) this.events.splice(i, 1);
  }

  close(): void {
    this.socket?.destroy();
    this.server.close();
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_r, reject) => { timer = setTimeout(() => reject(new QmpError(`${what} within ${ms / 1000} s`)), ms); }),
  ]);
}
