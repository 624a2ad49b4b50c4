// The console streams of one VM (COM1..COM4 and the debug console): scroll-back kept
// across runs, and the subscribers that get it first and live bytes after.
import { CONSOLE_PORTS, LIMITS, type ConsolePort } from '../api/contract';
import { ScrollbackBuffer } from './buffers';

interface ConsoleSubscriber {
  port: ConsolePort;
  listener(offset: number, data: Uint8Array): void;
}

export class VmConsoles {
  private readonly buffers = CONSOLE_PORTS.map(() => new ScrollbackBuffer(LIMITS.consoleScrollbackBytes));
  private readonly subscribers = new Set<ConsoleSubscriber>();

  constructor(private readonly diag: (line: string) => void) {}

  /** Guest output of ring 0..4 (COM1..COM4, debug console). */
  deliver(ring: number, data: Uint8Array): void {
    if (!Number.isInteger(ring) || ring < 0 || ring >= this.buffers.length) return;
    const buffer = this.buffers[ring];
    const offset = buffer.end;
    buffer.append(data);
    const port = CONSOLE_PORTS[ring];
    for (const s of this.subscribers) {
      if (s.port !== port) continue;
      try {
        s.listener(offset, data);
      } catch (e) {
        this.diag(`console subscriber failed: ${(e as Error).message}`);
      }
    }
  }

  subscribe(port: ConsolePort, listener: (offset: number, data: Uint8Array) => void): () => void {
    const { offset, data } = this.buffers[CONSOLE_PORTS.indexOf(port)].snapshot();
    if (data.length > 0) listener(offset, data);
    const subscriber: ConsoleSubscriber = { port, listener };
    this.subscribers.add(subscriber);
    return () => { this.subscribers.delete(subscriber); };
  }

  /** The VM is deleted: nobody gets more bytes. */
  clear(): void {
    this.subscribers.clear();
  }
}
