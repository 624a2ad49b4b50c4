// The VM host: runs on the VM process's main thread. It starts the machine thread,
// connects COM ports and the debug console to their host backends, carries control
// commands (pause, resume, stop, reset) and restarts the machine on a guest reset.
import { EventEmitter } from 'node:events';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { MachineConfig, UsbDeviceConfig } from '../config';
import type { HostToMachine, MachineThreadData } from '../machine/machine-thread';
import type { MachineEnd, MachineStats, MachineToHost } from '../machine/machine';
import { DEBUGCON_RING } from '../platform/platform';
import { DeadlineKicker } from './deadline-kicker';
import { openSerialBackend, type SerialEndpoint } from './serial-backends';
import { CoalescedRing } from '../../../native/kvm';
import { allocateRam, type MemoryRegion } from '../memory/guest-memory';
import { type CounterSpec, STATS_CAPACITY, type StatsSample, StatsSampler } from '../shared/stats';
import { Channel, CHANNEL_TARGET, Doorbell } from '../shared/channel';
import {
  decodeLineSettings, decodeModemControl, encodeModemStatus, type ModemStatusLines, SERIAL_KIND,
} from '../shared/serial-messages';
import { ByteRing, COMMAND, ControlBlock, epochMs, kickVcpu, type StartupTiming } from '../shared/control';
import {
  decodeUsbMessage, encodeUsbRequest, USB_KIND, type UsbPortState, type UsbReply, type UsbRequestBody, UsbRequestError,
  XHCI_CHANNEL_TARGET,
} from '../shared/usb-messages';
import { type UsbCaptureSpec, type UsbCaptureSummary, UsbCaptures, type UsbTransferRecord } from './usb-capture';

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

const STATS_BYTES = STATS_CAPACITY * 4;
/**
 * How often KVM's coalesced write ring is looked at for a write left unapplied. Such a
 * write is applied at vCPU 0's next exit; it can only wait longer when the guest makes no
 * exits at all (halted right after it). A CONFIG_ADDRESS write has no effect until the
 * data-port access, which exits and applies it first, so the one write that can be left
 * waiting with an effect is a reset-control byte (0xcf9, inside the coalesced range):
 * it waits at most two looks, far less than the machine rebuild that follows.
 */
const COALESCED_WATCHDOG_MS = 20;
/** Bytes of ring per channel direction. */
const CHANNEL_BYTES = 64 * 1024;
/** Host → machine records held while the channel is full (no machine yet, or a burst); beyond it input is dropped, and logged. */
const BACKLOG_LIMIT_BYTES = 1024 * 1024;
/** Largest payload of one serial input record; longer input is split. */
const SERIAL_RECORD_BYTES = 4096;
/** While output streams, the VM host looks this often (the doorbell wakes it after a quiet spell). */
const STREAM_BATCH_MS = 2;
/** How long a USB request may wait for the machine (key jobs wait for the guest to poll). */
const USB_REQUEST_TIMEOUT_MS = 10000;
const USB_KEYS_TIMEOUT_MS = 30000;

/** A USB request's answer: the ports after it, and the port it concerned (attach, detach). */
export interface UsbAnswer {
  ports: UsbPortState[];
  port?: number;
  capture?: { sent: number; dropped: number };
}

interface Backlogged {
  target: number;
  kind: number;
  payload: Uint8Array;
}

export class VmHost extends EventEmitter<VmHostEvents> {
  private worker: Worker | null = null;
  private control = new ControlBlock();
  private readonly rings = Array.from({ length: 5 }, () => new ByteRing());
  /** Rung by the machine thread: ring output, toHost records, a new timer deadline. Kept across resets. */
  private readonly doorbell = new Doorbell();
  /** Host → machine records (serial input, backend completions); a send to an empty channel kicks vCPU 0. */
  private readonly toMachine = Channel.create(CHANNEL_BYTES);
  private readonly toHost = Channel.create(CHANNEL_BYTES);
  private readonly machineHandlers = new Map<number, (kind: number, payload: Uint8Array) => void>();
  /** Records waiting for room in toMachine, in order. */
  private backlog: Backlogged[] = [];
  private backlogBytes = 0;
  private backlogDropped = 0;
  /** Bumped to end the service loop of an earlier start. */
  private serviceGeneration = 0;
  /**
   * Machine-thread timers (e.g. a UART re-checking a ring that was full) run only when
   * vCPU 0 leaves KVM_RUN; a halted guest would never get there by itself.
   */
  private readonly deadlines = new DeadlineKicker(() => this.control.timerDeadline, () => this.kick(0));
  private coalescedTimer: NodeJS.Timeout | null = null;
  /** The statistics registry's counters: made once per VM, kept across resets. */
  private readonly statsBuffer = new SharedArrayBuffer(STATS_BYTES);
  private statsSchema: CounterSpec[] = [];
  readonly statsSampler = new StatsSampler(this.statsBuffer);
  private runPages: { buffer: SharedArrayBuffer; offset: number }[] = [];
  /** Guest RAM: made at start, handed to every machine launch (it survives resets), dropped at the end. */
  private ram: MemoryRegion[] | null = null;
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
  /** The USB devices plugged in now, with their ports, once one was hot-plugged (a relaunch plugs these). */
  private usbPlugged: UsbDeviceConfig[] | null = null;
  private nextUsbRequest = 1;
  private readonly usbRequests = new Map<number, {
    op: UsbRequestBody['op']; resolve(answer: UsbAnswer): void; reject(e: Error): void; timer: NodeJS.Timeout;
  }>();

  /** USB captures (usb-capture.ts): pcapng files and transfer-record streams. */
  readonly usbCaptures = new UsbCaptures(async (portMask, snapLength) =>
    (await this.usbRequest({ op: 'capture', portMask, snapLength })).capture);

  constructor(readonly config: MachineConfig) {
    super();
    this.toMachine.onWake = () => this.kick(0);
    this.onMachineMessage(XHCI_CHANNEL_TARGET, (kind, payload) => this.onUsbReply(kind, payload));
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
    this.usbPlugged = null;
    this.setState('starting');
    try {
      const specs = [...this.config.serial, this.config.debugcon];
      this.endpoints = await Promise.all(specs.map((spec, index) =>
        spec.kind === 'none' ? Promise.resolve(null) : openSerialBackend(spec, {
          label: index === DEBUGCON_RING ? 'debugcon' : `COM${index + 1}`,
          onInput: (data) => this.sendSerialInput(index, data),
          onModemStatus: (lines) => this.sendModemStatus(index, lines),
          onLog: (text) => this.emit('log', text),
          // The ring kept bytes while the endpoint was congested: look again.
          onWritable: () => this.doorbell.ring(),
        })));
      this.endpoints.forEach((e, i) => { if (e) this.emit('endpoint', i, e.description); });
      // As on a PC, RAM keeps its contents through resets; only a new start gets new RAM.
      this.ram = allocateRam(this.config.memoryBytes);
    } catch (e) {
      this.closeEndpoints();
      this.setState('stopped');
      throw e;
    }
    // Serving starts before the launch, so a machine that ends at once (finish) stops it.
    void this.serveMachine();
    // Counters are read from shared memory: no vCPU is kicked for a sample.
    this.statsTimer = setInterval(() => this.emit('stats', this.statsSampler.sample()), Math.max(100, this.statsIntervalMs));
    this.statsTimer.unref();
    try {
      await this.launchMachine();
    } catch (e) {
      this.stopServing();
      throw e;
    }
  }

  private launchMachine(): Promise<void> {
    this.control = new ControlBlock();
    this.deadlines.stop();
    this.launchedAt = Date.now();
    this.awaitingFirstOutput = true;
    this.emit('timing', { label: 'machine-launch', epochMs: epochMs() });
    const data: MachineThreadData = {
      config: this.launchConfig(),
      control: this.control.buffer,
      rings: this.rings.map((r) => r.buffer),
      stats: { buffer: this.statsBuffer, schema: this.statsSchema },
      hostLink: { doorbell: this.doorbell.buffer, toMachine: this.toMachine.buffer, toHost: this.toHost.buffer },
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
            if (this.coalescedRing) {
              this.coalescedTimer = setInterval(() => this.checkCoalescedRing(), COALESCED_WATCHDOG_MS);
              this.coalescedTimer.unref();
            }
            for (const t of m.timings) this.emit('timing', t);
            if (this.stopRequested) this.stop();
            else this.setState('running');
            this.usbCaptures.relaunched();
            resolve();
            break;
          case 'log':
            this.emit('log', m.text);
            break;
          case 'stats':
            this.statsWaiters.splice(0).forEach((w) => w(m.stats));
            break;
          case 'stats-schema':
            this.statsSchema = m.statsSchema;
            this.statsSampler.setSchema(m.statsSchema);
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
    if (this.coalescedTimer) clearInterval(this.coalescedTimer);
    this.coalescedTimer = null;
    this.deadlines.stop();
    this.runPages = [];
    void worker?.terminate();
    this.serviceMachine();
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
      // Keys being typed went with the old machine's keyboard; other requests still queued
      // in the channel are answered by the new machine.
      this.failUsbRequests('the VM was reset before every key was sent', 'keys');
      this.setState('starting');
      this.launchMachine().catch((e: Error) => this.finish({ reason: 'error', message: e.message }, stats));
      return;
    }
    this.finish(end, stats);
  }

  private stopServing(): void {
    this.serviceGeneration++;
    this.doorbell.ring(); // ends the service loop's wait
    if (this.statsTimer) clearInterval(this.statsTimer);
    this.statsTimer = null;
  }

  private finish(end: MachineEnd, stats: MachineStats): void {
    this.stopServing();
    this.failUsbRequests('the VM stopped before the USB request was done');
    this.emit('stats', this.statsSampler.sample());
    this.serviceMachine();
    this.usbCaptures.closeAll();
    this.closeEndpoints();
    this.ram = null;
    this.setState('stopped');
    this.emit('ended', end, stats);
  }

  private closeEndpoints(): void {
    for (const e of this.endpoints) e?.close();
    this.endpoints = [];
  }

  /**
   * Serves the machine thread without polling: sleeps on the doorbell, which the machine
   * rings when a ring or toHost goes from empty to non-empty or its timer deadline moves.
   */
  private async serveMachine(): Promise<void> {
    const generation = ++this.serviceGeneration;
    while (generation === this.serviceGeneration) {
      // Read before looking, so a ring while we look makes the wait return at once.
      const seen = this.doorbell.value;
      if (this.serviceMachine()) {
        // Output streams: gather the next batch as a poll would (a write per batch, not
        // per byte). Waiting on the doorbell resumes once a look finds nothing to do.
        await new Promise<void>((resolve) => setTimeout(resolve, STREAM_BATCH_MS));
      } else {
        await this.doorbell.wait(seen);
      }
    }
  }

  /**
   * Moves guest output to the backends, takes the machine's records and re-arms the timer
   * for its deadline. Returns true if anything moved (look again soon). A look that moves
   * nothing saw every ring empty after its last drain (the re-check Channel describes),
   * so a byte that arrived meanwhile rang the doorbell.
   */
  private serviceMachine(): boolean {
    let moved = false;
    this.rings.forEach((ring, i) => {
      const endpoint = this.endpoints[i];
      // A congested endpoint leaves bytes in the ring: the guest sees THR busy and waits.
      // The endpoint's onWritable rings the doorbell when it can take more.
      if (ring.used === 0 || endpoint?.congested) return;
      if (this.awaitingFirstOutput && i !== DEBUGCON_RING) {
        // A one-shot, off the vCPU's path.
        this.awaitingFirstOutput = false;
        this.emit('timing', { label: 'first-console-byte', epochMs: epochMs() });
      }
      const data = ring.drain();
      endpoint?.write(data);
      this.emit('output', i, data);
      moved = true;
    });
    try {
      if (this.toHost.receive(this.routeFromMachine) > 0) moved = true;
    } catch (e) {
      this.emit('log', `a machine message failed: ${(e as Error).message}`);
      moved = true;
    }
    this.deadlines.update();
    return moved;
  }

  private readonly routeFromMachine = (target: number, kind: number, payload: Uint8Array): void => {
    const port = target - CHANNEL_TARGET.SERIAL;
    if (port >= 0 && port < 4) return this.onSerialMessage(port, kind, payload);
    const handler = this.machineHandlers.get(target);
    if (handler) handler(kind, payload);
    else this.emit('log', `a machine message for unknown target ${target} (kind ${kind}) was dropped`);
  };

  private onSerialMessage(port: number, kind: number, payload: Uint8Array): void {
    const endpoint = this.endpoints[port];
    if (!endpoint) return;
    if (kind === SERIAL_KIND.LINE_SETTINGS) {
      const settings = decodeLineSettings(payload);
      if (settings) endpoint.applyLineSettings?.(settings);
    } else if (kind === SERIAL_KIND.MODEM_CONTROL) {
      const modem = decodeModemControl(payload);
      if (modem) endpoint.applyModemControl?.(modem);
    }
  }

  /** A queued write still there a look later is applied when vCPU 0 leaves KVM_RUN: make it leave. */
  private checkCoalescedRing(): void {
    const ring = this.coalescedRing;
    if (ring === null) return;
    const last = ring.pending() ? ring.last : -1;
    if (last !== -1 && last === this.coalescedLastSeen) this.kick(0);
    this.coalescedLastSeen = last;
  }

  /**
   * Sends a record to the machine thread's handler for `target`, in order with earlier
   * ones. While the channel is full records wait here (and go once the machine has made
   * room); past BACKLOG_LIMIT_BYTES they are dropped, counted and logged.
   * Returns false if this record was dropped.
   */
  sendToMachine(target: number, kind: number, payload: Uint8Array = new Uint8Array(0)): boolean {
    if (this.backlog.length === 0 && this.toMachine.send(target, kind, payload)) return true;
    if (this.backlogBytes + payload.length > BACKLOG_LIMIT_BYTES) {
      if (this.backlogDropped === 0) this.emit('log', 'the machine is not taking host input; dropping it');
      this.backlogDropped += payload.length;
      return false;
    }
    this.backlog.push({ target, kind, payload });
    this.backlogBytes += payload.length;
    if (this.backlog.length === 1) void this.sendBacklog();
    return true;
  }

  private async sendBacklog(): Promise<void> {
    while (this.backlog.length > 0) {
      const next = this.backlog[0];
      if (!this.toMachine.send(next.target, next.kind, next.payload)) {
        await this.toMachine.waitForSpace(next.payload.length);
        continue;
      }
      this.backlog.shift();
      this.backlogBytes -= next.payload.length;
      if (this.backlog.length === 0 && this.backlogDropped > 0) {
        this.emit('log', `host input resumed; ${this.backlogDropped} bytes were dropped`);
        this.backlogDropped = 0;
      }
    }
  }

  /**
   * Routes the machine thread's records for `target` (at or above CHANNEL_TARGET.FIRST_FREE)
   * to `handler` on this thread.
   */
  onMachineMessage(target: number, handler: (kind: number, payload: Uint8Array) => void): void {
    if (target < CHANNEL_TARGET.FIRST_FREE) throw new Error(`channel target ${target} is reserved`);
    if (this.machineHandlers.has(target)) throw new Error(`channel target ${target} has a handler already`);
    this.machineHandlers.set(target, handler);
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
    for (let at = 0; at < data.length; at += SERIAL_RECORD_BYTES) {
      this.sendToMachine(CHANNEL_TARGET.SERIAL + port, SERIAL_KIND.INPUT, data.subarray(at, at + SERIAL_RECORD_BYTES));
    }
  }

  /** Modem status lines from a real serial device, forwarded to the guest's UART. */
  sendModemStatus(port: number, lines: ModemStatusLines): void {
    if (port < 0 || port > 3) return;
    this.sendToMachine(CHANNEL_TARGET.SERIAL + port, SERIAL_KIND.MODEM_STATUS, encodeModemStatus(lines));
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

  // ---- USB hot-plug ----------------------------------------------------------------------

  /** The config a launch builds: after a hot-plug, the USB devices plugged in at that moment. */
  private launchConfig(): MachineConfig {
    if (this.usbPlugged === null || !this.config.usb) return this.config;
    return { ...this.config, usb: { ...this.config.usb, devices: this.usbPlugged.map((d) => ({ ...d })) } };
  }

  /** Every port of the VM's xHCI and what sits on it. */
  async usbPorts(): Promise<UsbPortState[]> {
    return (await this.usbRequest({ op: 'list' })).ports;
  }

  /** Plugs an emulated device in; resolves with its port. Rejects with UsbRequestError (nothing plugged). */
  async attachUsb(device: UsbDeviceConfig): Promise<UsbPortState> {
    const answer = await this.usbRequest({ op: 'attach', device });
    return answer.ports.find((p) => p.port === answer.port) as UsbPortState;
  }

  /** Unplugs the device on `port` (1-based): the guest sees the disconnect, an image is closed. */
  async detachUsb(port: number): Promise<void> {
    await this.usbRequest({ op: 'detach', port });
  }

  /** Presses and releases keys on the VM's first USB keyboard; resolves once the guest could take them all. */
  async sendUsbKeys(events: { usage: number; down: boolean }[]): Promise<void> {
    if (this._state !== 'running') throw new UsbRequestError('invalid-state', `cannot type into a VM that is ${this._state}`);
    await this.usbRequest({ op: 'keys', events });
  }

  private usbRequest(body: UsbRequestBody): Promise<UsbAnswer> {
    if (this.config.usb?.controller !== 'xhci') {
      return Promise.reject(new UsbRequestError('invalid-state', 'this VM has no USB controller (its config has no "usb" section)'));
    }
    if (this._state === 'stopped' || this._state === 'stopping') {
      return Promise.reject(new UsbRequestError('invalid-state', `the VM is ${this._state}`));
    }
    const id = this.nextUsbRequest++;
    const timeoutMs = body.op === 'keys' ? USB_KEYS_TIMEOUT_MS : USB_REQUEST_TIMEOUT_MS;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.usbRequests.delete(id);
        reject(new UsbRequestError('timeout', body.op === 'keys'
          ? `the guest did not take the keys within ${timeoutMs / 1000} s (is it reading the USB keyboard?)`
          : `the machine did not answer the USB request within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.usbRequests.set(id, { op: body.op, resolve, reject, timer });
      if (!this.sendToMachine(XHCI_CHANNEL_TARGET, USB_KIND.REQUEST, encodeUsbRequest({ ...body, id }))) {
        clearTimeout(timer);
        this.usbRequests.delete(id);
        reject(new UsbRequestError('invalid-state', 'the machine is not taking requests'));
      }
    });
  }

  /** Starts a USB capture (a pcapng file, records for `listener`, or both). */
  startUsbCapture(spec: UsbCaptureSpec, listener?: (record: UsbTransferRecord) => void): Promise<UsbCaptureSummary> {
    return this.usbCaptures.start(spec, listener ?? null);
  }

  /** Stops a USB capture; its file is complete when this resolves. */
  stopUsbCapture(id: number): Promise<UsbCaptureSummary> {
    return this.usbCaptures.stop(id);
  }

  private onUsbReply(kind: number, payload: Uint8Array): void {
    if (kind === USB_KIND.CAPTURE) {
      this.usbCaptures.record(payload);
      return;
    }
    const reply = decodeUsbMessage(payload) as UsbReply | null;
    if (kind !== USB_KIND.REPLY || reply === null) return;
    // Whoever asked, the machine's devices changed: a relaunch plugs in what is there now.
    if (reply.ok && Array.isArray(reply.plugged)) this.usbPlugged = reply.plugged;
    if (reply.ok && Array.isArray(reply.ports)) this.usbCaptures.setPorts(reply.ports);
    const waiter = this.usbRequests.get(reply.id);
    if (!waiter) return;
    this.usbRequests.delete(reply.id);
    clearTimeout(waiter.timer);
    if (reply.ok) waiter.resolve({ ports: reply.ports, port: reply.port, capture: reply.capture });
    else waiter.reject(new UsbRequestError(reply.code, reply.error));
  }

  private failUsbRequests(message: string, only?: UsbRequestBody['op']): void {
    for (const [id, w] of this.usbRequests) {
      if (only !== undefined && w.op !== only) continue;
      clearTimeout(w.timer);
      this.usbRequests.delete(id);
      w.reject(new UsbRequestError('invalid-state', message));
    }
  }
}

function emptyStats(): MachineStats {
  return { exits: {}, devices: [], kicks: 0, apExits: 0 };
}
