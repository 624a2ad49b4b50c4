// The VM host: runs on the VM process's main thread. It starts the machine thread,
// connects COM ports and the debug console to their host backends, carries control
// commands (pause, resume, stop, reset) and restarts the machine on a guest reset.
import { EventEmitter } from 'node:events';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { MachineConfig } from '../config';
import type { HostNotification } from '../devices/context';
import type { HostToMachine, MachineThreadData } from '../machine/machine-thread';
import type { MachineEnd, MachineStats, MachineToHost } from '../machine/machine';
import { DEBUGCON_RING } from '../platform/platform';
import { openSerialBackend, type SerialEndpoint } from './serial-backends';
import { CoalescedRing } from '../../../native/kvm';
import { allocateRam, type MemoryRegion } from '../memory/guest-memory';
import { type CounterSpec, STATS_CAPACITY, type StatsSample, StatsSampler } from '../shared/stats';
import { ByteRing, COMMAND, ControlBlock, epochMs, kickVcpu, monotonicMs, type StartupTiming } from '../shared/control';

export type VmState = 'starting' | 'running' | 'paused' | 'stopping' | 'stopped';

export interface VmHostEvents {
  state: [VmState];
  log: [string];
  /** Bytes the guest wrote to COM `port` (0..3) or the debug console (4). */
  output: [number, Uint8Array];
  /** A backend is ready; e.g. "COM1: /dev/pts/5". */
  endpoint: [number, string];
  ended: [MachineEnd, MachineStats];
  /** A start-up milestone of each launch (porthole run --timings prints them). */
  timing: [StartupTiming];
  /** A reading of the statistics registry, several times a second while the VM runs. */
  stats: [StatsSample];
}

const RING_POLL_MS = 2;
const STATS_BYTES = STATS_CAPACITY * 4;

export class VmHost extends EventEmitter<VmHostEvents> {
  private worker: Worker | null = null;
  private control = new ControlBlock();
  private readonly rings = Array.from({ length: 5 }, () => new ByteRing());
  /** The statistics registry's counters: made once per VM, kept across resets. */
  private readonly statsBuffer = new SharedArrayBuffer(STATS_BYTES);
  private statsSchema: CounterSpec[] = [];
  readonly statsSampler = new StatsSampler(this.statsBuffer);
  private runPages: { buffer: SharedArrayBuffer; offset: number }[] = [];
  /** Guest RAM: made at start, handed to every machine launch (it survives resets), dropped at the end. */
  private ram: MemoryRegion[] | null = null;
  private pollTimer: NodeJS.Timeout | null = null;
  private statsTimer: NodeJS.Timeout | null = null;
  /** How often the statistics registry is sampled into a 'stats' event (100 ms = 10 Hz at most). */
  statsIntervalMs = 250;
  private endpoints: (SerialEndpoint | null)[] = [];
  private _state: VmState = 'stopped';
  private resetCount = 0;
  private launchedAt = 0;
  /** KVM's coalesced write ring of this launch, and the entry it showed at the last poll. */
  private coalescedRing: CoalescedRing | null = null;
  private coalescedLastSeen = -1;
  /** Set until the guest's first COM byte of this launch has been stamped. */
  private awaitingFirstOutput = false;
  private stopRequested = false;
  private userResetRequested = false;
  private statsWaiters: ((s: MachineStats) => void)[] = [];
  /** Maximum guest-initiated resets in a row before the VM is stopped (a reset loop). */
  maxResets = 1000;

  constructor(readonly config: MachineConfig) {
    super();
  }

  get state(): VmState {
    return this._state;
  }

  /** The guest's RAM regions while the VM runs (the same buffers across resets), else null. */
  get guestRam(): readonly MemoryRegion[] | null {
    return this.ram;
  }

  private setState(s: VmState): void {
    if (this._state === s) return;
    this._state = s;
    this.emit('state', s);
  }

  /** Opens the serial backends and starts the machine. Resolves once vCPUs run. */
  async start(): Promise<void> {
    if (this._state !== 'stopped') throw new Error(`cannot start a VM that is ${this._state}`);
    this.stopRequested = false;
    this.setState('starting');
    try {
      const specs = [...this.config.serial, this.config.debugcon];
      this.endpoints = await Promise.all(specs.map((spec, index) =>
        spec.kind === 'none' ? Promise.resolve(null) : openSerialBackend(spec, {
          label: index === DEBUGCON_RING ? 'debugcon' : `COM${index + 1}`,
          onInput: (data) => this.sendSerialInput(index, data),
          onModemStatus: (lines) => this.sendModemStatus(index, lines),
          onLog: (text) => this.emit('log', text),
        })));
      this.endpoints.forEach((e, i) => { if (e) this.emit('endpoint', i, e.description); });
      // As on a PC, RAM keeps its contents through resets; only a new start gets new RAM.
      this.ram = allocateRam(this.config.memoryBytes);
    } catch (e) {
      this.closeEndpoints();
      this.setState('stopped');
      throw e;
    }
    await this.launchMachine();
    this.pollTimer = setInterval(() => this.drainRings(), RING_POLL_MS);
    // Counters are read from shared memory: no vCPU is kicked for a sample.
    this.statsTimer = setInterval(() => this.emit('stats', this.statsSampler.sample()), Math.max(100, this.statsIntervalMs));
    this.statsTimer.unref();
  }

  private launchMachine(): Promise<void> {
    this.control = new ControlBlock();
    this.launchedAt = Date.now();
    this.awaitingFirstOutput = true;
    this.emit('timing', { label: 'machine-launch', epochMs: epochMs() });
    const data: MachineThreadData = {
      config: this.config,
      control: this.control.buffer,
      rings: this.rings.map((r) => r.buffer),
      stats: { buffer: this.statsBuffer, schema: this.statsSchema },
      ram: this.ram ?? [],
    };
    const worker = new Worker(path.join(__dirname, '..', 'machine', 'machine-thread.js'), { workerData: data });
    this.worker = worker;
    return new Promise((resolve, reject) => {
      let started = false;
      worker.on('message', (m: MachineToHost) => {
        switch (m.type) {
          case 'started':
            started = true;
            this.runPages = m.runPages;
            this.statsSchema = m.statsSchema;
            this.statsSampler.setSchema(m.statsSchema);
            this.coalescedRing = m.coalescedRing && new CoalescedRing(m.coalescedRing.buffer, m.coalescedRing.offset);
            this.coalescedLastSeen = -1;
            for (const t of m.timings) this.emit('timing', t);
            if (this.stopRequested) this.stop();
            else this.setState('running');
            resolve();
            break;
          case 'log':
            this.emit('log', m.text);
            break;
          case 'notify':
            this.onNotification(m.notification);
            break;
          case 'stats':
            this.statsWaiters.splice(0).forEach((w) => w(m.stats));
            break;
          case 'ended':
            this.onMachineEnded(m.end, m.stats);
            if (!started) {
              if (m.end.reason === 'error') reject(new Error(m.end.message));
              else resolve();
            }
            break;
        }
      });
      worker.on('error', (e) => {
        this.onMachineEnded({ reason: 'error', message: `machine thread crashed: ${e.message}` }, emptyStats());
        if (!started) reject(e);
      });
    });
  }

  private onMachineEnded(end: MachineEnd, stats: MachineStats): void {
    const worker = this.worker;
    this.worker = null;
    this.coalescedRing = null;
    void worker?.terminate();
    this.drainRings();
    const userReset = this.userResetRequested && end.reason === 'stopped';
    this.userResetRequested = false;
    // A guest that has run a while since its last reset is not in a reset loop.
    if (Date.now() - this.launchedAt > 10000) this.resetCount = 0;
    if ((end.reason === 'reset' || userReset) && !this.stopRequested) {
      if (this.resetCount++ >= this.maxResets) {
        this.finish({ reason: 'error', message: `the guest reset ${this.maxResets} times in a row; stopped it` }, stats);
        return;
      }
      this.emit('log', userReset ? 'reset by the user' : 'guest reset');
      this.setState('starting');
      this.launchMachine().catch((e: Error) => this.finish({ reason: 'error', message: e.message }, stats));
      return;
    }
    this.finish(end, stats);
  }

  private finish(end: MachineEnd, stats: MachineStats): void {
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = null;
    if (this.statsTimer) clearInterval(this.statsTimer);
    this.statsTimer = null;
    this.emit('stats', this.statsSampler.sample());
    this.drainRings();
    this.closeEndpoints();
    this.ram = null;
    this.setState('stopped');
    this.emit('ended', end, stats);
  }

  private closeEndpoints(): void {
    for (const e of this.endpoints) e?.close();
    this.endpoints = [];
  }

  /** Every RING_POLL_MS: moves guest output to the backends and fires due machine timers. */
  private drainRings(): void {
    this.rings.forEach((ring, i) => {
      const endpoint = this.endpoints[i];
      // A congested endpoint leaves bytes in the ring: the guest sees THR busy and waits.
      if (ring.used === 0 || endpoint?.congested) return;
      if (this.awaitingFirstOutput && i !== DEBUGCON_RING) {
        // Within RING_POLL_MS of the guest's write; a one-shot, off the vCPU's path.
        this.awaitingFirstOutput = false;
        this.emit('timing', { label: 'first-console-byte', epochMs: epochMs() });
      }
      const data = ring.drain();
      endpoint?.write(data);
      this.emit('output', i, data);
    });
    // Machine-thread timers (e.g. a UART re-checking a ring that was full) run only when
    // vCPU 0 leaves KVM_RUN; a halted guest would never get there by itself.
    const deadline = this.control.timerDeadline;
    if (deadline !== 0 && monotonicMs() >= deadline) this.kick(0);
    // A queued write still there a poll later (the guest halted right after it, e.g. a
    // reset through 0xcf9) is applied when vCPU 0 leaves KVM_RUN: make it leave.
    const ring = this.coalescedRing;
    if (ring !== null) {
      const last = ring.pending() ? ring.last : -1;
      if (last !== -1 && last === this.coalescedLastSeen) this.kick(0);
      this.coalescedLastSeen = last;
    }
  }

  private onNotification(n: HostNotification): void {
    const endpoint = this.endpoints[n.port];
    if (!endpoint) return;
    if (n.type === 'serial-line') endpoint.applyLineSettings?.(n.settings);
    else endpoint.applyModemControl?.(n.modem);
  }

  private post(m: HostToMachine): void {
    this.worker?.postMessage(m);
    this.kick(0);
  }

  private kick(cpu: number): void {
    const page = this.runPages[cpu];
    if (page) kickVcpu(page.buffer, page.offset, this.control.tid(cpu));
  }

  /** Host → guest bytes for COM `port` (0..3). */
  sendSerialInput(port: number, data: Uint8Array): void {
    if (port < 0 || port > 3) return;
    this.post({ type: 'serial-input', port, data });
  }

  /** Modem status lines from a real serial device, forwarded to the guest's UART. */
  sendModemStatus(port: number, lines: { cts: boolean; dsr: boolean; ri: boolean; dcd: boolean }): void {
    this.post({ type: 'serial-modem-status', port, ...lines });
  }

  pause(): void {
    if (this._state !== 'running') throw new Error(`cannot pause a VM that is ${this._state}`);
    this.control.setCommand(COMMAND.PAUSE);
    for (let cpu = 0; cpu < this.runPages.length; cpu++) this.kick(cpu);
    this.setState('paused');
  }

  resume(): void {
    if (this._state !== 'paused') throw new Error(`cannot resume a VM that is ${this._state}`);
    this.control.setCommand(COMMAND.RUN);
    this.post({ type: 'resume' });
    this.setState('running');
  }

  /** Asks the machine to stop; resolves when every vCPU has left KVM_RUN and KVM is closed. */
  stop(): Promise<void> {
    if (this._state === 'stopped') return Promise.resolve();
    this.stopRequested = true;
    const done = new Promise<void>((resolve) => this.once('ended', () => resolve()));
    if (this._state !== 'starting') this.setState('stopping');
    this.control.setCommand(COMMAND.STOP);
    for (let cpu = 0; cpu < this.runPages.length; cpu++) this.kick(cpu);
    // A paused machine thread sits in its event loop: a message wakes it to see STOP.
    this.worker?.postMessage({ type: 'resume' } satisfies HostToMachine);
    return done;
  }

  /** A hard reset from the user: the machine is rebuilt, as on a guest reset. */
  reset(): Promise<void> {
    if (this._state !== 'running' && this._state !== 'paused') {
      return Promise.reject(new Error(`cannot reset a VM that is ${this._state}`));
    }
    this.userResetRequested = true;
    const relaunched = new Promise<void>((resolve) => {
      const onState = (s: VmState) => {
        if (s === 'running' || s === 'stopped') {
          this.off('state', onState);
          resolve();
        }
      };
      this.on('state', onState);
    });
    this.control.setCommand(COMMAND.STOP);
    for (let cpu = 0; cpu < this.runPages.length; cpu++) this.kick(cpu);
    this.worker?.postMessage({ type: 'resume' } satisfies HostToMachine);
    return relaunched;
  }

  /** Asks the machine thread to log vCPU 0's state (a 'log' event), for a guest that hangs. */
  dumpVcpus(): void {
    if (this.worker) this.post({ type: 'dump-vcpus' });
  }

  /** Exit and device counters from the running machine. */
  stats(): Promise<MachineStats> {
    if (!this.worker) return Promise.resolve(emptyStats());
    return new Promise((resolve) => {
      this.statsWaiters.push(resolve);
      this.post({ type: 'stats' });
    });
  }
}

function emptyStats(): MachineStats {
  return { exits: {}, devices: [], kicks: 0, apExits: 0 };
}
