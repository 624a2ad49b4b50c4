// A VM process the test scripts by hand (no KVM): it records what the manager sends and
// plays back messages, output and exits.
import assert from 'node:assert/strict';
import type { VmProcessHandle } from '../../main/manager/process-launcher';
import type { ManagerToVm, VmToManager } from '../../main/manager/vm-process-protocol';

export class ScriptedProcess implements VmProcessHandle {
  readonly pid = 4242;
  readonly sent: ManagerToVm[] = [];
  readonly signals: string[] = [];
  private messageListeners: ((m: VmToManager) => void)[] = [];
  private textListeners: ((t: string) => void)[] = [];
  private exitListeners: ((code: number | null, signal: string | null) => void)[] = [];
  /** What a kill does; by default the process dies of the signal. */
  onKill: (signal: string) => void = (signal) => this.exit(null, signal);

  send(message: ManagerToVm): void { this.sent.push(message); }
  kill(signal: NodeJS.Signals): void { this.signals.push(signal); this.onKill(signal); }
  onMessage(l: (m: VmToManager) => void): void { this.messageListeners.push(l); }
  onOutputText(l: (t: string) => void): void { this.textListeners.push(l); }
  onExit(l: (code: number | null, signal: string | null) => void): void { this.exitListeners.push(l); }

  message(m: VmToManager): void { this.messageListeners.forEach((l) => l(m)); }
  stderr(t: string): void { this.textListeners.forEach((l) => l(t)); }
  exit(code: number | null, signal: string | null): void { this.exitListeners.forEach((l) => l(code, signal)); }
  /** Answers the last command with `ok`. */
  reply(ok = true, message = 'nope'): void {
    const last = [...this.sent].reverse().find((m) => m.type === 'command');
    assert.ok(last && last.type === 'command');
    this.message(ok ? { type: 'reply', id: last.id, ok: true } : { type: 'reply', id: last.id, ok: false, message });
  }
  /** The normal start handshake. */
  boot(): void {
    this.message({ type: 'ready' });
    this.message({ type: 'state', state: 'starting' });
    this.message({ type: 'state', state: 'running' });
    this.message({ type: 'started' });
  }
}
