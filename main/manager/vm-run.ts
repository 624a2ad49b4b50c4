// One run of a VM: a state machine from launching its process to the process's exit.
// Replaces the manager's loose run flags with two explicit values:
//
//   phase (what the process has reached)           end intent (why it is ending)
//     launching --ready--> building                  none --stopVm / start timeout--> stop
//     building --started--> live                     none|stop --forceOffVm--> force-off
//     building --start-failed--> failed
//     launching|building|live|failed --exit--> exited
//
// and the state the UI sees while the run lasts (starting, running, paused, stopping),
// which follows the VM host's reports. How the run ended (VmExitInfo) is decided from
// the phase it exited in, the intent, and what the process said before it went.
import { ApiError, CONSOLE_PORTS, type UsbTransferRecord, type VmExitInfo, type VmState } from '../api/contract';
import type { MachineConfig } from '../vmm/config';
import type { MachineEnd, MachineStats } from '../vmm/machine/machine';
import type { StatsSample } from '../vmm/shared/stats';
import type { CommandAnswer, VmProcessLink } from './vm-process-link';
import type { VmCaptureRequest, VmCommand, VmToManager } from './vm-process-protocol';
import { StatsUnpacker } from './stats-wire';
import type { UsbRequestBody } from '../vmm/shared/usb-messages';

export type RunPhase = 'launching' | 'building' | 'live' | 'failed' | 'exited';
export type EndIntent = 'none' | 'stop' | 'force-off';

const NEXT_PHASES: Record<RunPhase, readonly RunPhase[]> = {
  launching: ['building', 'exited'],
  building: ['live', 'failed', 'exited'],
  live: ['exited'],
  failed: ['exited'],
  exited: [],
};

/** What a run tells the VM it belongs to. */
export interface RunObserver {
  /** `run.state` changed. */
  stateChanged(): void;
  output(ring: number, data: Uint8Array): void;
  endpoint(ring: number, description: string): void;
  log(line: string): void;
  /** Text the process wrote to stdout or stderr. */
  logText(text: string): void;
  /** Ends an unterminated last line of process text. */
  flushLogText(): void;
  logTail(lines: number): string[];
  sample(sample: StatsSample): void;
  /** A batch of USB transfer records (only while the transfer stream is on). */
  transfers?(records: UsbTransferRecord[], dropped: number): void;
  /** The process is gone; `info` says how the run ended. Called once, last. */
  exited(info: VmExitInfo): void;
}

export interface RunOptions {
  /** The sampling period the process should send statistics samples at, or null for none (asked when it is ready). */
  statsPeriod: () => number | null;
  /** Whether the process should send USB transfer records (asked when it is ready). */
  transfersWanted?: () => boolean;
  startTimeoutMs: number;
}

/** Log lines included in a crash report. */
export const CRASH_LOG_LINES = 20;

export function seconds(ms: number): string {
  const n = Math.max(1, Math.round(ms / 1000));
  return `${n} second${n === 1 ? '' : 's'}`;
}

/** A message to continue a sentence with: "Cannot open" → "cannot open", "COM2: …" stays. */
export function lowerFirst(text: string): string {
  const t = sentence(text).replace(/\.$/, '');
  return /^[A-Z][a-z]/.test(t) ? t[0].toLowerCase() + t.slice(1) : t;
}

function sentence(text: string): string {
  const t = text.trim();
  if (t === '') return '';
  const s = t[0].toUpperCase() + t.slice(1);
  return /[.!?]$/.test(s) ? s : `${s}.`;
}

export class VmRun {
  private phaseValue: RunPhase = 'launching';
  private intentValue: EndIntent = 'none';
  private stateValue: VmState = 'starting';
  private startFailure: string | null = null;
  private ended: { end: MachineEnd; stats: MachineStats } | null = null;
  private startWaiter: { resolve(): void; reject(e: ApiError): void } | null = null;
  private readonly startedPromise: Promise<void>;
  private readonly exitWaiters: (() => void)[] = [];
  private startTimer: NodeJS.Timeout | null = null;
  /** Rebuilds the process's packed statistics samples. */
  private readonly unpacker = new StatsUnpacker();

  constructor(
    private readonly link: VmProcessLink,
    private readonly config: MachineConfig,
    private readonly observer: RunObserver,
    private readonly options: RunOptions,
  ) {
    this.startedPromise = new Promise<void>((resolve, reject) => { this.startWaiter = { resolve, reject }; });
    // Whoever awaits started() sees the failure; nobody awaiting must not be an unhandled rejection.
    this.startedPromise.catch(() => undefined);
    link.listen((m) => this.onMessage(m));
    link.handle.onOutputText((text) => observer.logText(text));
    link.handle.onExit((code, signal) => this.onExit(code, signal));
    this.startTimer = setTimeout(() => this.onStartTimeout(), options.startTimeoutMs);
  }

  get phase(): RunPhase { return this.phaseValue; }
  get intent(): EndIntent { return this.intentValue; }
  /** The VM's state as the UI sees it while this run lasts. */
  get state(): VmState { return this.stateValue; }
  get pid(): number | undefined { return this.link.pid; }

  /** Settles once the machine runs (or could not start). */
  started(): Promise<void> {
    return this.startedPromise;
  }

  private to(next: RunPhase): boolean {
    if (!NEXT_PHASES[this.phaseValue].includes(next)) return false;
    this.phaseValue = next;
    // A machine that failed to start still gets until the timeout to end its process.
    if ((next === 'live' || next === 'exited') && this.startTimer) {
      clearTimeout(this.startTimer);
      this.startTimer = null;
    }
    return true;
  }

  private setState(state: VmState): void {
    if (this.stateValue === state) return;
    this.stateValue = state;
    this.observer.stateChanged();
  }

  private settleStart(failure: ApiError | null): void {
    const w = this.startWaiter;
    this.startWaiter = null;
    if (!w) return;
    if (failure) w.reject(failure);
    else w.resolve();
  }

  private onMessage(m: VmToManager): void {
    if (this.phaseValue === 'exited') return;
    switch (m.type) {
      case 'ready':
        if (!this.to('building')) return;
        this.link.send({ type: 'start', config: this.config });
        {
          const periodMs = this.options.statsPeriod();
          if (periodMs !== null) this.link.send({ type: 'stats-stream', on: true, periodMs });
        }
        if (this.options.transfersWanted?.()) this.link.send({ type: 'transfer-stream', on: true });
        break;
      case 'started':
        if (this.to('live')) this.settleStart(null);
        break;
      case 'start-failed':
        if (!this.to('failed')) return;
        this.startFailure = m.message;
        this.observer.log(`could not start: ${m.message}`);
        this.settleStart(new ApiError('vm-failed', `The VM could not start: ${lowerFirst(m.message)}.`));
        break;
      case 'state':
        // "stopped" is only final once the process is gone (onExit).
        if (m.state === 'stopped') this.setState('stopping');
        else if (!(this.stateValue === 'stopping' && m.state === 'starting')) this.setState(m.state);
        break;
      case 'output':
        if (Number.isInteger(m.ring) && m.data instanceof Uint8Array) this.observer.output(m.ring, m.data);
        break;
      case 'endpoint':
        if (Number.isInteger(m.ring) && m.ring >= 0 && m.ring < CONSOLE_PORTS.length) this.observer.endpoint(m.ring, m.description);
        break;
      case 'log':
        this.observer.log(m.line);
        break;
      case 'stats':
        if (typeof m.sample === 'object' && m.sample !== null && Array.isArray(m.sample.counters)) this.observer.sample(m.sample);
        break;
      case 'stats-packed': {
        const sample = this.unpacker.unpack(m.sample);
        if (sample !== null) this.observer.sample(sample);
        break;
      }
      case 'usb-transfers':
        if (Array.isArray(m.records)) this.observer.transfers?.(m.records, Number.isInteger(m.dropped) ? m.dropped : 0);
        break;
      case 'ended':
        this.ended = { end: m.end, stats: m.stats };
        break;
    }
  }

  private onStartTimeout(): void {
    this.startTimer = null;
    if (this.phaseValue === 'live' || this.phaseValue === 'exited') return;
    this.observer.log(`the machine did not start within ${this.options.startTimeoutMs} ms; killing the VM process`);
    this.settleStart(new ApiError('timeout', `The VM did not start within ${seconds(this.options.startTimeoutMs)}.`));
    if (this.intentValue === 'none') this.intentValue = 'stop';
    this.link.kill('SIGKILL');
  }

  /** Tells the process whether to send statistics samples (`periodMs` apart), or not (null). */
  streamStats(periodMs: number | null): void {
    // Before "ready" the process cannot take it yet; "ready" sends the wish then.
    if (this.phaseValue === 'launching' || this.phaseValue === 'exited') return;
    this.link.send(periodMs === null ? { type: 'stats-stream', on: false } : { type: 'stats-stream', on: true, periodMs });
  }

  /** Tells the process whether to send USB transfer records. */
  streamTransfers(on: boolean): void {
    if (this.phaseValue === 'launching' || this.phaseValue === 'exited') return;
    this.link.send({ type: 'transfer-stream', on });
  }

  command(command: VmCommand): Promise<CommandAnswer> {
    return this.link.command(command);
  }

  usb(request: UsbRequestBody | VmCaptureRequest): Promise<CommandAnswer> {
    return this.link.usb(request);
  }

  /** Host → guest bytes for COM port `port` (0..3). */
  input(port: number, data: Uint8Array): void {
    this.link.send({ type: 'input', port, data });
  }

  /** A clean stop: the machine is asked to stop, or the process is ended if no machine runs yet. */
  stop(): void {
    if (this.intentValue === 'none') this.intentValue = 'stop';
    if (this.phaseValue === 'launching') {
      // Nothing runs in KVM yet, so the process can simply be ended.
      this.link.kill('SIGKILL');
    } else {
      this.setState('stopping');
      this.command('stop').catch(() => undefined);
    }
  }

  /** Kills the process at once. */
  forceOff(): void {
    this.intentValue = 'force-off';
    this.link.kill('SIGKILL');
  }

  /** Resolves true once the process is gone, false after `timeoutMs`. */
  waitForExit(timeoutMs: number): Promise<boolean> {
    if (this.phaseValue === 'exited') return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.exitWaiters.push(() => { clearTimeout(timer); resolve(true); });
    });
  }

  private exitInfo(exitedIn: RunPhase, code: number | null, signal: string | null): VmExitInfo {
    const at = new Date().toISOString();
    const base = { at, exitCode: null as number | null, signal: null as string | null, logTail: this.observer.logTail(CRASH_LOG_LINES) };
    if (this.intentValue === 'force-off') return { ...base, kind: 'forced-off', message: 'The VM was forced off.', signal };
    const ended = this.ended;
    if (ended && code === 0) {
      const end = ended.end;
      switch (end.reason) {
        case 'poweroff':
          return { ...base, kind: 'poweroff', message: `The guest powered off (exit status ${end.exitCode}).`, exitCode: end.exitCode };
        case 'stopped':
          return { ...base, kind: 'stopped', message: 'The VM was stopped.' };
        case 'reset':
          return { ...base, kind: 'error', message: 'The VM was stopped because the guest kept resetting.' };
        case 'error':
          return { ...base, kind: 'error', message: this.startFailure !== null
            ? `The VM could not start: ${lowerFirst(end.message)}.`
            : `The VM stopped because of an error: ${lowerFirst(end.message)}.` };
      }
    }
    if (this.intentValue === 'stop' && exitedIn !== 'live') {
      return { ...base, kind: 'stopped', message: 'The VM was stopped before it started.', exitCode: code, signal };
    }
    const message = signal
      ? `The VM process was killed by signal ${signal}.`
      : code !== null ? `The VM process exited with code ${code}.` : 'The VM process ended unexpectedly.';
    return { ...base, kind: 'crashed', message, exitCode: code, signal };
  }

  private onExit(code: number | null, signal: string | null): void {
    const exitedIn = this.phaseValue;
    if (!this.to('exited')) return;
    this.observer.flushLogText();
    const info = this.exitInfo(exitedIn, code, signal);
    this.observer.log(`VM process ${this.link.pid ?? '?'} ended: ${signal ? `signal ${signal}` : `exit code ${code}`}; ${info.message}`);
    if (info.kind === 'crashed') info.logTail = this.observer.logTail(CRASH_LOG_LINES);
    const failure = new ApiError(info.kind === 'crashed' ? 'vm-failed' : 'invalid-state', info.message);
    this.settleStart(new ApiError('vm-failed', `The VM could not start: ${lowerFirst(info.message)}.`));
    this.link.rejectAll(failure);
    this.observer.exited(info);
    this.exitWaiters.splice(0).forEach((w) => w());
  }
}
