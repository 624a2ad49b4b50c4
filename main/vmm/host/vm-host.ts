// The VM host: runs on the VM process's main thread. It starts the machine thread,
// connects COM ports and the debug console to their host backends, carries control
// commands (pause, resume, stop, reset) and restarts the machine on a guest reset.
// USB serial ports get their host backends here too, named to the machine by a link number.
import { EventEmitter } from 'node:events';
import path from 'node:path';
import type { Worker } from 'node:worker_threads';
import { launchMachineThread } from './machine-prewarm';
import { kernelForBoot } from '../boot/kernel-unpack';
import { ConfigError, parseSerialBackend, type MachineConfig, type PciAssignConfig, type UsbDeviceConfig } from '../config';
import { EMULATED_WHILE_RUNNING, usbAttachRefusal, type UsbChoiceRoots, type UsbStartChoice } from '../../host/usb-controller-choice';
import { takeStartPci } from './start-pci';
import type { HostToMachine, MachineThreadData } from '../machine/machine-thread';
import type { MachineEnd, MachineStats, MachineToHost } from '../machine/machine';
import { DEBUGCON_RING } from '../platform/layout';
import { DeadlineKicker } from './deadline-kicker';
import { openSerialBackend, type SerialEndpoint } from './serial-backends';
import { CoalescedRing } from '../../../native/kvm';
import { allocateRam, dumpRam, hostAddressOf, type MemoryRegion } from '../memory/guest-memory';
import { AssignedPci, reclaimFromDeadHolders } from './pci-assign';
import { type CounterSpec, STATS_CAPACITY, type StatsSample, StatsSampler } from '../shared/stats';
import { Channel, CHANNEL_TARGET, Doorbell } from '../shared/channel';
import {
  decodeLineSettings, decodeModemControl, encodeModemStatus, type ModemStatusLines, SERIAL_KIND,
} from '../shared/serial-messages';
import { ByteRing, COMMAND, ControlBlock, epochMs, kickVcpu, type StartupTiming } from '../shared/control';
import {
  decodeSerialData, decodeUsbMessage, encodeSerialData, encodeUsbRequest, USB_KIND, USB_SERIAL_RECORD_BYTES, type UsbPortState,
  type UsbReply, type UsbRequestBody, UsbRequestError, XHCI_CHANNEL_TARGET,
} from '../shared/usb-messages';
import { isPassthroughKind } from '../shared/usb-passthrough-messages';
import { HostUsbPassthrough } from './usb-passthrough';
import { findHostUsbDevice, listSysfsUsbDevices, type HostUsbDeviceInfo } from '../../host/usb-inventory';
import { HOST_NEEDS_PATHS, hostNeeds } from '../../host/host-needs';
import type { HostUsbHandle } from '../../host/host-usb-handle';
import { openHostUsbHandle } from '../../host/usbfs-handle';
import { processAlive, repairUsbJournal, UsbJournal } from '../../host/usb-journal';
import { usb2RefusalOfHostDevice } from '../../host/usb-speed-compat';
import { HostUsbWatch } from '../../host/host-usb-watch';
import { firstMatchingRule, type AutoAttachAction, type HeldDevice, USB_REENUMERATION_WINDOW_MS, UsbAutoAttach, type UsbRule } from '../../host/usb-rules';
import { dataDir } from '../../manager/app-paths';
import { HostNic } from './net-host';
import { DiskIoThread } from './disk-io';
import { DISK_CHANNEL_TARGET, DISK_KIND } from '../shared/virtio-blk-requests';
import { decodeNetRecord, NET_CHANNEL_TARGET } from '../shared/net-messages';
import {
  CDROM_CHANNEL_TARGET, CDROM_KIND, type CdromRequestBody, CdromRequestError, decodeCdromMessage, encodeCdromMessage,
} from '../shared/cdrom-messages';
import type { CdromDriveInfo } from '../../api/contract';
import { diskName } from '../config';
import { type UsbCaptureSpec, type UsbCaptureSummary, UsbCaptures, type UsbTransferRecord } from './usb-capture';

export type VmState = 'starting' | 'running' | 'paused' | 'stopping' | 'stopped';

export interface VmHostEvents {
  state: [VmState];
  log: [string];
  /** Bytes the guest wrote to COM `port` (0..3) or the debug console (4). */
  output: [number, Uint8Array];
  /** A backend is ready; e.g. "COM1: /dev/pts/5". */
  endpoint: [number, string];
  /** A USB serial port's backend is ready: its usb.devices index at start (-1 when hot-plugged), its description. */
  usbSerialEndpoint: [number, string];
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
 * it waits at most two looks. The look is the VM host's only periodic wake-up while the
 * guest idles, so it is kept rare (10 a second): such a reset may come 0.2 s late.
 */
const COALESCED_WATCHDOG_MS = 100;
/**
 * Bytes of ring per channel direction. Host USB passthrough moves transfer data through it: a
 * 1 MiB bulk transfer in a 64 KiB ring took 16 drain-and-refill rounds (a vCPU kick each).
 */
const CHANNEL_BYTES = 4 * 1024 * 1024;
/** Host → machine records held while the channel is full (no machine yet, or a burst); beyond it input is dropped, and logged. */
const BACKLOG_LIMIT_BYTES = 1024 * 1024;
/** Largest payload of one serial input record; longer input is split. */
const SERIAL_RECORD_BYTES = 4096;
/** While output streams, the VM host looks this often (the doorbell wakes it after a quiet spell). */
const STREAM_BATCH_MS = 2;
/** How long a USB request may wait for the machine (key jobs wait for the guest to poll). */
const USB_REQUEST_TIMEOUT_MS = 10000;
const USB_KEYS_TIMEOUT_MS = 30000;
/** Passthrough records join the channel backlog only while it holds less than this. */
const PASSTHROUGH_BACKLOG_BYTES = 256 * 1024;

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

/** Waits before each try to take a host device that just appeared (it may still be enumerating). */
const ENUMERATION_RETRY_MS = [0, 300, 700, 1500, 2500];

export interface VmHostOptions {
  /**
   * Boot a bzImage as its kernel unpacked on the host (cached; after the first boot, which
   * starts the unpack in the background). Faster; the guest loses the decompressor's KASLR. `porthole run` sets it.
   */
  unpackKernel?: boolean;
  /** A guest reset ends the VM (end reason 'reset') instead of restarting it, as QEMU's -no-reboot. */
  noReboot?: boolean;
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
  /** For readers outside the stream (porthole stats): its totals, without disturbing the stream's intervals. */
  private readerSampler: StatsSampler | null = null;
  private runPages: { buffer: SharedArrayBuffer; offset: number }[] = [];
  /** Guest RAM: made at start, handed to every machine launch (it survives resets), dropped at the end. */
  private ram: MemoryRegion[] | null = null;
  /** The host PCI functions of this run: config pciAssign and the USB controllers planUsbControllers chose. */
  private runPciAssign: PciAssignConfig[] = [];
  private usbPathChoices: UsbStartChoice[] = [];
  /** Host PCI functions this VM holds while it runs (config pciAssign). */
  private assignedPci: AssignedPci | null = null;
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
  /** USB serial ports' host backends by link (kept across resets, as COM ports' are). */
  private readonly usbSerials = new Map<number, SerialEndpoint | null>();
  /** Links of serial ports whose attach has not been answered yet. */
  private readonly usbSerialsPending = new Set<number>();
  private nextUsbSerialLink = 1;
  private readonly usbRequests = new Map<number, {
    op: UsbRequestBody['op']; resolve(answer: UsbAnswer): void; reject(e: Error): void; timer: NodeJS.Timeout;
  }>();

  /** Host USB devices passed through, by handle, with the port each got. */
  private readonly hostUsb = new Map<number, { passthrough: HostUsbPassthrough; port: number; force: boolean }>();
  /**
   * Auto-attach rules and re-enumeration (host/usb-rules.ts): fed by a live host device list
   * while the VM runs with rules or host devices; its actions run one at a time, in order.
   */
  private autoAttach: UsbAutoAttach | null = null;
  private stopHostUsbWatch: (() => void) | null = null;
  private autoQueue: Promise<void> = Promise.resolve();
  /** Looks at sysfs often while a device that left may come back (hot-plug events may not come: no udevd). */
  private windowPoll: NodeJS.Timeout | null = null;
  private windowPollUntil = 0;
  private readonly hostUsbWatch = new HostUsbWatch<HostUsbDeviceInfo>(() => this.hostUsbSource.list(), undefined, undefined,
    (line) => this.emit('log', `USB: ${line}`));
  private nextHostUsbHandle = 1;
  /** Passthrough records waiting to go to the machine (kept here, not in the backlog, which drops). */
  private passthroughOut: { kind: number; payload: Uint8Array }[] = [];
  private passthroughTimer: NodeJS.Timeout | null = null;
  /** Where host USB devices come from: sysfs and node-usb (tests give fakes). */
  hostUsbSource: {
    list(): HostUsbDeviceInfo[];
    open(info: HostUsbDeviceInfo): HostUsbHandle;
    journal: UsbJournal | null;
    sysfsRoot?: string;
    /** The /proc the whole-controller choice reads (host-needs: mounts, swaps, input devices); absent: /proc. */
    procRoot?: string;
    /** Why the host depends on a device (host-needs.ts), or null; absent: the real /proc and sysfs. */
    hostNeeds?: (info: HostUsbDeviceInfo, all: HostUsbDeviceInfo[]) => string | null;
  } = { list: () => listSysfsUsbDevices(), open: (info) => openHostUsbHandle(info), journal: new UsbJournal(dataDir()) };
  /** USB captures (usb-capture.ts): pcapng files and transfer-record streams. */
  readonly usbCaptures = new UsbCaptures(async (portMask, snapLength) =>
    (await this.usbRequest({ op: 'capture', portMask, snapLength })).capture);

  /** The kernel file this run boots, when it is not the config's (kernel-unpack.ts). */
  private bootKernel: string | null = null;

  constructor(readonly config: MachineConfig, private readonly options: VmHostOptions = {}) {
    super();
    this.toMachine.onWake = () => this.kick(0);
    this.onMachineMessage(XHCI_CHANNEL_TARGET, (kind, payload) => this.onUsbReply(kind, payload));
    this.onMachineMessage(CDROM_CHANNEL_TARGET, (kind, payload) => this.onCdromMessage(kind, payload));
    this.onMachineMessage(NET_CHANNEL_TARGET, (kind, payload) => {
      const record = decodeNetRecord(payload);
      if (record) this.nics[record.nic]?.onMachineRecord(kind, record.body);
    });
  }

  /** The thread that runs what the virtio disks lend it, made at start, kept across resets. */
  private diskIo: DiskIoThread | null = null;

  /** The NICs' host sides (backends and pcaps), opened at start, kept across resets. */
  private nics: HostNic[] = [];

  /** Opens every NIC's backend and pcap file; the first that fails closes the others and throws. */
  private async openNics(): Promise<void> {
    for (const [i, config] of (this.config.nics ?? []).entries()) {
      const nic = await HostNic.open(i, `net${i}`, config, {
        sendToMachine: (kind, payload) => this.sendToMachine(NET_CHANNEL_TARGET, kind, payload),
        log: (text) => this.emit('log', text),
        ram: () => this.ram,
        stats: new Uint32Array(this.statsBuffer),
      });
      this.nics.push(nic);
      this.emit('log', `net${i}: ${nic.description}`);
    }
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
    this.cdromMedia = null;
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
      await this.openConfiguredUsbSerials();
      await this.openNics();
      this.chooseBootKernel();
      // As on a PC, RAM keeps its contents through resets; only a new start gets new RAM.
      this.ram = allocateRam(this.config.memoryBytes);
      this.diskIo = DiskIoThread.open(this.config, this.ram, this.statsBuffer, {
        sendFailure: (record) => this.sendToMachine(DISK_CHANNEL_TARGET, DISK_KIND.DATAPLANE_FAILED, record),
        log: (text) => this.emit('log', text),
      });
      const journal = this.hostUsbSource.journal;
      const rules = this.config.usb?.rules ?? [];
      const setting = this.config.usbPassthroughPath ?? 'auto';
      this.usbPathChoices = [];
      const taken = takeStartPci({
        vm: this.config.name,
        pciAssign: this.config.pciAssign ?? [],
        rules,
        setting,
        hostUsb: rules.length > 0 && setting !== 'emulated' ? this.hostUsbSource.list() : [],
        roots: this.usbChoiceRoots(),
        ram: () => (this.ram ?? []).map((r) => ({ guestBase: r.guestBase, size: r.size, hostAddr: hostAddressOf(r), name: r.name })),
        journal,
        reclaim: journal === null ? undefined : (addresses) => {
          const lines = reclaimFromDeadHolders(addresses, journal.read().pci, {
            self: process.pid, alive: processAlive, repair: (pid) => repairUsbJournal(journal, { pid }),
          });
          for (const line of lines) this.emit('log', line);
        },
        log: (line) => this.emit('log', line),
      });
      this.usbPathChoices = taken.choices;
      this.runPciAssign = taken.pciAssign;
      this.assignedPci = taken.assigned;
    } catch (e) {
      this.releaseAssignedPci();
      this.closeEndpoints();
      this.setState('stopped');
      throw e;
    }
    // Serving starts before the launch, so a machine that ends at once (finish) stops it.
    void this.serveMachine();
    this.armStatsTimer();
    try {
      await this.launchMachine();
    } catch (e) {
      this.stopServing();
      throw e;
    }
    if ((this.config.usb?.rules?.length ?? 0) > 0) this.watchHostUsb();
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
      netDataPlanes: this.nics.map((nic) => nic.dataPlane?.block.buffer ?? null),
      diskDataPlanes: this.diskIo?.blockBuffers(this.config.disks?.length ?? 0) ?? [],
    };
    const worker = launchMachineThread(data);
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
    // The machine's doorbells and irqfds are gone: the NICs' data planes stop with it.
    for (const nic of this.nics) nic.machineEnded();
    this.diskIo?.machineEnded();
    this.serviceMachine();
    const userReset = this.userResetRequested && end.reason === 'stopped';
    this.userResetRequested = false;
    // A guest that has run a while since its last reset is not in a reset loop.
    if (Date.now() - this.launchedAt > 10000) this.resetCount = 0;
    if ((end.reason === 'reset' || userReset) && !this.stopRequested) {
      if (this.options.noReboot && !userReset) {
        this.finish(end, stats);
        return;
      }
      if (this.resetCount++ >= this.maxResets) {
        this.finish({ reason: 'error', message: `the guest reset ${this.maxResets} times in a row; stopped it` }, stats);
        return;
      }
      this.emit('log', userReset ? 'reset by the user' : `guest reset${end.reason === 'reset' && end.cause ? ` (${end.cause})` : ''}`);
      if (end.reason === 'reset' && end.cause?.includes('triple fault')) this.dumpRamAfterTripleFault();
      // Keys being typed went with the old machine's keyboard; other requests still queued
      // in the channel are answered by the new machine.
      this.failUsbRequests('the VM was reset before every key was sent', 'keys');
      this.setState('starting');
      this.launchMachine().catch((e: Error) => this.finish({ reason: 'error', message: e.message }, stats));
      return;
    }
    this.finish(end, stats);
  }

  /**
   * With PORTHOLE_RAM_DUMP=FILE, the guest's RAM as the triple fault left it (before the
   * relaunch reloads the kernel) goes to FILE.<guest base in hex>, once per region. On AMD
   * the vCPU's registers are gone by then (KVM re-initialises the VMCB after a shutdown), so
   * memory (the kernel's log buffer, its stacks) is what is left to read.
   */
  private dumpRamAfterTripleFault(): void {
    const file = process.env.PORTHOLE_RAM_DUMP;
    if (!file || this.ram === null) return;
    for (const line of dumpRam(file, this.ram)) this.emit('log', line);
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
    this.failCdromRequests('the VM stopped before the CD-ROM request was done');
    this.stopHostUsbWatch?.();
    this.stopHostUsbWatch = null;
    this.autoAttach = null;
    if (this.windowPoll !== null) clearInterval(this.windowPoll);
    this.windowPoll = null;
    this.releaseHostUsb();
    this.emit('stats', this.statsSampler.sample());
    this.serviceMachine();
    this.usbCaptures.closeAll();
    this.closeEndpoints();
    this.releaseAssignedPci();
    this.ram = null;
    this.setState('stopped');
    this.emit('ended', end, stats);
  }

  /** Samples the registry every `statsIntervalMs` (100 ms = 10 Hz at most) from now on. */
  private armStatsTimer(): void {
    if (this.statsTimer) clearInterval(this.statsTimer);
    // Counters are read from shared memory: no vCPU is kicked for a sample.
    this.statsTimer = setInterval(() => this.emit('stats', this.statsSampler.sample()), Math.max(100, this.statsIntervalMs));
    this.statsTimer.unref();
  }

  /**
   * The counters' totals now (porthole stats reads them through the monitor socket and makes
   * its own rates); a read of shared memory, no vCPU is kicked.
   */
  readStats(): StatsSample {
    if (this.readerSampler === null) this.readerSampler = new StatsSampler(this.statsBuffer);
    this.readerSampler.setSchema(this.statsSchema);
    return this.readerSampler.sample();
  }

  /** Changes the sampling period of a running VM (a faster vm-stats watcher came or went). */
  setStatsInterval(ms: number): void {
    this.statsIntervalMs = ms;
    if (this.statsTimer) this.armStatsTimer();
  }

  /** Gives the assigned PCI functions back to the host (after the machine thread let go of them). */
  private releaseAssignedPci(): void {
    const pci = this.assignedPci;
    this.assignedPci = null;
    for (const line of pci?.close() ?? []) this.emit('log', line);
  }

  private closeEndpoints(): void {
    for (const e of this.endpoints) e?.close();
    this.endpoints = [];
    for (const e of this.usbSerials.values()) e?.close();
    this.usbSerials.clear();
    for (const nic of this.nics) void nic.close();
    this.nics = [];
    void this.diskIo?.close();
    this.diskIo = null;
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
        // Channel records do not count: a passthrough SUBMIT waiting out this batch delay
        // cost each USB transfer stage up to STREAM_BATCH_MS (issue 10).
        await new Promise<void>((resolve) => setTimeout(resolve, STREAM_BATCH_MS));
      } else {
        await this.doorbell.wait(seen);
      }
    }
  }

  /**
   * Moves guest output to the backends, takes the machine's records and re-arms the timer
   * for its deadline. Returns true if output moved (look again soon). Records taken do not
   * count: receive() drains the channel until it finds it empty, so a record sent after that
   * rang the doorbell. A look that moves nothing saw every ring empty after its last drain
   * (the re-check Channel describes), so a byte that arrived meanwhile rang the doorbell.
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
      this.toHost.receive(this.routeFromMachine);
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
    for (const nic of this.nics) nic.dataPlane?.hold(true);
    this.diskIo?.hold(true);
    this.setState('paused');
  }

  resume(): void {
    if (this._state !== 'paused') throw new Error(`cannot resume a VM that is ${this._state}`);
    this.control.setCommand(COMMAND.RUN);
    this.post({ type: 'resume' });
    for (const nic of this.nics) nic.dataPlane?.hold(false);
    this.diskIo?.hold(false);
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
    if (!this.worker) return;
    // This thread's half of the serial path: output not yet taken, input not yet delivered.
    const rings = this.rings.map((r, i) => `ring ${i} ${r.used}`).filter((_, i) => this.endpoints[i]).join(', ');
    this.emit('log', `VM host: output waiting: ${rings || 'none'}; to the machine: ${this.toMachine.used} bytes in the channel, ${this.backlogBytes} in the backlog`);
    this.post({ type: 'dump-vcpus' });
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
  /** With unpackKernel, a bzImage boots as its cached unpacked kernel, or starts one (kernel-unpack.ts). */
  private chooseBootKernel(): void {
    this.bootKernel = null;
    const boot = this.config.boot;
    if (!this.options.unpackKernel || boot.kind !== 'linux') return;
    const choice = kernelForBoot(boot.kernel);
    this.emit('log', choice.note);
    if (choice.path !== boot.kernel) this.bootKernel = choice.path;
  }

  private launchConfig(): MachineConfig {
    let config: MachineConfig = this.assignedPci === null ? this.config : { ...this.config, pciAssign: this.assignedPci.withFds(this.runPciAssign) };
    if (this.bootKernel !== null && config.boot.kind === 'linux') config = { ...config, boot: { ...config.boot, kernel: this.bootKernel } };
    if (this.usbPlugged !== null && config.usb) config = { ...config, usb: { ...config.usb, devices: this.usbPlugged.map((d) => ({ ...d })) } };
    const media = this.cdromMedia;
    if (media !== null && config.disks) {
      // The discs in the drives now, not the config's: a reset keeps a changed CD in.
      config = {
        ...config,
        disks: config.disks.map((d, i) => {
          if (d.media !== 'cdrom' || !media.has(diskName(d, i))) return d;
          const { path: _old, ...rest } = d;
          const now = media.get(diskName(d, i));
          return now === null || now === undefined ? rest : { ...rest, path: now };
        }),
      };
    }
    return config;
  }

  // ---- CD-ROM media ----------------------------------------------------------------------

  /** The discs in the CD-ROM drives now, by drive name, once one changed (a relaunch puts these in). */
  private cdromMedia: Map<string, string | null> | null = null;
  private nextCdromRequest = 1;
  private readonly cdromRequests = new Map<number, { resolve(drives: CdromDriveInfo[]): void; reject(e: Error): void; timer: NodeJS.Timeout }>();

  /** The VM's CD-ROM drives and their discs. */
  cdromDrives(): Promise<CdromDriveInfo[]> {
    return this.cdromRequest({ op: 'list' });
  }

  /** Puts an ISO in a drive (absent: the first); rejects with CdromRequestError (a locked disc needs `force` to be swapped). */
  insertCdrom(path: string, drive?: string, force = false): Promise<CdromDriveInfo[]> {
    return this.cdromRequest({ op: 'insert', path, ...(drive === undefined ? {} : { drive }), force });
  }

  /** Takes a drive's disc out; rejects with CdromRequestError while the guest locks it, unless `force`. */
  ejectCdrom(drive?: string, force = false): Promise<CdromDriveInfo[]> {
    return this.cdromRequest({ op: 'eject', ...(drive === undefined ? {} : { drive }), force });
  }

  private cdromRequest(body: CdromRequestBody): Promise<CdromDriveInfo[]> {
    if (!(this.config.disks ?? []).some((d) => d.media === 'cdrom')) {
      return Promise.reject(new CdromRequestError('invalid-state', 'this VM has no CD-ROM drive (add one to its config: a disks entry with "media": "cdrom", or --cdrom)'));
    }
    if (this._state === 'stopped' || this._state === 'stopping') return Promise.reject(new CdromRequestError('invalid-state', `the VM is ${this._state}`));
    const id = this.nextCdromRequest++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.cdromRequests.delete(id);
        reject(new CdromRequestError('invalid-state', `the machine did not answer the CD-ROM request within ${USB_REQUEST_TIMEOUT_MS / 1000} s`));
      }, USB_REQUEST_TIMEOUT_MS);
      this.cdromRequests.set(id, { resolve, reject, timer });
      if (!this.sendToMachine(CDROM_CHANNEL_TARGET, CDROM_KIND.REQUEST, encodeCdromMessage({ ...body, id }))) {
        clearTimeout(timer);
        this.cdromRequests.delete(id);
        reject(new CdromRequestError('invalid-state', 'the machine is not taking requests'));
      }
    });
  }

  private onCdromMessage(kind: number, payload: Uint8Array): void {
    const m = decodeCdromMessage(payload);
    if (m === null) return;
    if (Array.isArray(m.drives)) {
      this.cdromMedia = new Map((m.drives as CdromDriveInfo[]).map((d) => [d.drive, d.path]));
    }
    if (kind !== CDROM_KIND.REPLY || typeof m.id !== 'number') return;
    const waiter = this.cdromRequests.get(m.id);
    if (!waiter) return;
    this.cdromRequests.delete(m.id);
    clearTimeout(waiter.timer);
    if (m.ok === true) waiter.resolve(m.drives as CdromDriveInfo[]);
    else waiter.reject(new CdromRequestError((m.code as CdromRequestError['code']) ?? 'invalid-state', String(m.error)));
  }

  private failCdromRequests(message: string): void {
    for (const [id, w] of this.cdromRequests) {
      clearTimeout(w.timer);
      this.cdromRequests.delete(id);
      w.reject(new CdromRequestError('invalid-state', message));
    }
  }

  /** Every port of the VM's xHCI and what sits on it. */
  async usbPorts(): Promise<UsbPortState[]> {
    return (await this.usbRequest({ op: 'list' })).ports.map((p) => this.withPathReason(p));
  }

  /** A host device's port state with the path it took and why (the UI shows it). */
  private withPathReason(p: UsbPortState): UsbPortState {
    const name = p.device?.hostDevice;
    if (p.device === null || name === undefined) return p;
    const start = this.usbPathChoices.find((c) => c.sysfsName === name && c.choice.path === 'emulated');
    const reason = start?.choice.reason
      ?? (this.config.usbPassthroughPath === 'emulated' ? 'the VM\'s usbPassthroughPath is "emulated"' : EMULATED_WHILE_RUNNING);
    return { ...p, device: { ...p.device, passthroughPath: 'emulated', pathReason: reason } };
  }

  /**
   * Plugs an emulated device in; resolves with its port. Rejects with UsbRequestError (nothing
   * plugged). A serial port's backend is opened first: one that cannot be opened plugs nothing.
   */
  async attachUsb(device: UsbDeviceConfig): Promise<UsbPortState> {
    if (device.kind !== 'serial') {
      const answer = await this.usbRequest({ op: 'attach', device });
      return answer.ports.find((p) => p.port === answer.port) as UsbPortState;
    }
    // The same refusal as any request, before a backend is opened for nothing.
    const refusal = this.usbRefusal();
    if (refusal) throw refusal;
    const link = this.nextUsbSerialLink++;
    this.usbSerialsPending.add(link);
    try {
      const endpoint = await this.openUsbSerial(device.backend, link);
      this.usbSerials.set(link, endpoint);
      if (endpoint) this.emit('usbSerialEndpoint', -1, endpoint.description);
      const answer = await this.usbRequest({ op: 'attach', device: { ...device, link } });
      return answer.ports.find((p) => p.port === answer.port) as UsbPortState;
    } catch (e) {
      this.usbSerials.get(link)?.close();
      this.usbSerials.delete(link);
      throw e;
    } finally {
      this.usbSerialsPending.delete(link);
    }
  }

  /** Opens the backends of the config's USB serial ports and gives each its link. */
  private async openConfiguredUsbSerials(): Promise<void> {
    const devices = this.config.usb?.devices ?? [];
    if (!devices.some((d) => d.kind === 'serial')) return;
    const linked: UsbDeviceConfig[] = [];
    for (const [i, d] of devices.entries()) {
      if (d.kind !== 'serial') {
        linked.push({ ...d });
        continue;
      }
      const link = this.nextUsbSerialLink++;
      let endpoint: SerialEndpoint | null;
      try {
        endpoint = await this.openUsbSerial(d.backend, link);
      } catch (e) {
        throw new Error(`usb.devices[${i}] (serial): ${(e as Error).message}`);
      }
      this.usbSerials.set(link, endpoint);
      if (endpoint) this.emit('usbSerialEndpoint', i, endpoint.description);
      linked.push({ ...d, link });
    }
    // The first launch plugs them with their links, as a relaunch plugs what is there then.
    this.usbPlugged = linked;
  }

  /** A USB serial port's host backend ("none": no endpoint, output dropped); throws UsbRequestError. */
  private async openUsbSerial(backend: string, link: number): Promise<SerialEndpoint | null> {
    let spec;
    try {
      spec = parseSerialBackend(backend);
    } catch (e) {
      throw new UsbRequestError('invalid-argument', e instanceof ConfigError ? e.message : String(e));
    }
    if (spec.kind === 'none') return null;
    try {
      return await openSerialBackend(spec, {
        label: `USB serial ${link}`,
        onInput: (data) => {
          for (let at = 0; at < data.length; at += USB_SERIAL_RECORD_BYTES - 4) {
            this.sendToMachine(XHCI_CHANNEL_TARGET, USB_KIND.SERIAL_INPUT, encodeSerialData(link, data.subarray(at, at + USB_SERIAL_RECORD_BYTES - 4)));
          }
        },
        onLog: (text) => this.emit('log', text),
      });
    } catch (e) {
      throw new UsbRequestError('invalid-argument', `the USB serial port's backend "${backend}" cannot be opened: ${(e as Error).message}`);
    }
  }

  /** Guest output of a USB serial port to its backend. */
  private onUsbSerialOutput(payload: Uint8Array): void {
    const data = decodeSerialData(payload);
    if (data === null) return;
    this.usbSerials.get(data.link)?.write(data.bytes);
  }

  /** Unplugs the device on `port` (1-based): the guest sees the disconnect, an image is closed, a host device goes back to the host. */
  async detachUsb(port: number): Promise<void> {
    await this.usbRequest({ op: 'detach', port });
    for (const [handle, h] of this.hostUsb) {
      if (h.port !== port) continue;
      this.hostUsb.delete(handle);
      await this.giveBack(h.passthrough);
    }
  }

  /**
   * Passes a host USB device through: `selector` is its port path ("1-1.4"), BUS:ADDR or
   * VID:PID. Its kernel drivers are detached (and remembered, in the journal too), it is
   * claimed and plugged into a free port of its speed (or `port`). Rejects with
   * UsbRequestError and a sentence (a permission problem names the udev rule); nothing is
   * taken then. A device the host depends on (host-needs.ts) is refused unless `force`.
   */
  async attachHostUsb(selector: string, port?: number, force = false): Promise<UsbPortState> {
    if (this.config.usb?.controller !== 'xhci') {
      throw new UsbRequestError('invalid-state', 'this VM has no USB controller (its config has no "usb" section)');
    }
    if (this._state !== 'running' && this._state !== 'paused') throw new UsbRequestError('invalid-state', `the VM is ${this._state}`);
    let info: HostUsbDeviceInfo;
    let all: HostUsbDeviceInfo[];
    try {
      all = this.hostUsbSource.list();
      info = findHostUsbDevice(selector, all);
    } catch (e) {
      throw new UsbRequestError('not-found', (e as Error).message);
    }
    if (info.isHub) throw new UsbRequestError('invalid-argument', `host USB device ${info.sysfsName} is a hub; hubs are not passed through`);
    const refusal = usbAttachRefusal(this.config.usbPassthroughPath ?? 'auto');
    if (refusal !== null) throw new UsbRequestError('invalid-state', refusal);
    const source = this.hostUsbSource;
    const needs = source.hostNeeds !== undefined
      ? source.hostNeeds(info, all)
      : hostNeeds(info, all, { ...HOST_NEEDS_PATHS, ...(source.sysfsRoot === undefined ? {} : { sysfsRoot: source.sysfsRoot }) });
    if (needs !== null && !force) {
      throw new UsbRequestError('invalid-state', `the host needs USB device ${info.sysfsName}: ${needs}. Force it to pass it through anyway`);
    }
    if (needs !== null) this.emit('log', `USB: host device ${info.sysfsName} forced into the VM although ${needs}`);
    if ([...this.hostUsb.values()].some((h) => h.passthrough.info.sysfsName === info.sysfsName)) {
      throw new UsbRequestError('invalid-state', `host USB device ${info.sysfsName} is in this VM already`);
    }
    const journal = this.hostUsbSource.journal;
    const holder = journal?.read().entries.find((e) => e.sysfsName === info.sysfsName && e.pid !== process.pid);
    if (journal && holder !== undefined) {
      if (processAlive(holder.pid)) {
        throw new UsbRequestError('invalid-state', `host USB device ${info.sysfsName} is in VM ${holder.vm} (process ${holder.pid})`);
      }
      // A crashed VM process left it: give its drivers back first, so ours remembers them.
      for (const line of repairUsbJournal(journal, { pid: holder.pid, sysfsRoot: this.hostUsbSource.sysfsRoot })) this.emit('log', line);
      info = findHostUsbDevice(info.sysfsName, this.hostUsbSource.list());
    }
    let usb: HostUsbHandle;
    try {
      usb = this.hostUsbSource.open(info);
    } catch (e) {
      throw new UsbRequestError('invalid-state', (e as Error).message);
    }
    const handle = this.nextHostUsbHandle++;
    const passthrough = new HostUsbPassthrough(info, handle, usb, {
      send: (kind, payload) => this.sendPassthrough(kind, payload),
      log: (text) => this.emit('log', text),
      // Unplugged from the host (or re-enumerating): the guest sees it leave too.
      gone: () => this.hostUsbGone(handle),
    }, this.hostUsbSource.journal, this.config.name, this.hostUsbSource.sysfsRoot);
    try {
      passthrough.take();
    } catch (e) {
      try {
        usb.close();
      } catch {
        // It was never ours.
      }
      throw new UsbRequestError('invalid-state', (e as Error).message);
    }
    this.hostUsb.set(handle, { passthrough, port: 0, force });
    const product = [info.manufacturer, info.product].filter((x) => x).join(' ') || `USB device ${info.sysfsName}`;
    const speed = info.speed === 'super-plus' ? 'super' : info.speed ?? 'high';
    try {
      const state = await this.attachUsb({
        kind: 'host', handle, hostName: info.sysfsName, product, speed, vendorId: info.vendorId, productId: info.productId,
        // Whether it may take a USB 2 port (at high speed) when no USB 3 port is free, or is asked to.
        ...(speed === 'super' ? { usb2Refusal: usb2RefusalOfHostDevice(info.sysfsName, this.hostUsbSource.sysfsRoot) } : {}),
        ...(port === undefined ? {} : { port }),
        ...(usb.usbfsNode?.() ? { usbfs: usb.usbfsNode() as { fd: number; path: string } } : {}),
      });
      const entry = this.hostUsb.get(handle);
      if (entry) entry.port = state.port;
      const described = this.withPathReason(state);
      this.emit('log', `USB: host device ${info.sysfsName} (${product}) passed through on port ${state.port} by the emulated path: ${described.device?.pathReason ?? EMULATED_WHILE_RUNNING}`);
      // Watched from now on, so it can come back here if it re-enumerates.
      this.watchHostUsb();
      return described;
    } catch (e) {
      this.hostUsb.delete(handle);
      await this.giveBack(passthrough);
      throw e;
    }
  }

  /** Starts following the host's device list for rules and re-enumeration (once per run). */
  private watchHostUsb(): void {
    if (this.stopHostUsbWatch !== null || this.config.usb?.controller !== 'xhci') return;
    if (this._state !== 'running' && this._state !== 'paused') return;
    this.autoAttach ??= new UsbAutoAttach(this.config.usb.rules ?? [], this.config.usb.reenumerationWindowMs ?? USB_REENUMERATION_WINDOW_MS);
    this.stopHostUsbWatch = this.hostUsbWatch.watch((devices) => this.onHostUsbList(devices));
  }

  /** The sysfs and /proc roots the whole-controller choice reads (tests give hostUsbSource a fake tree). */
  private usbChoiceRoots(): UsbChoiceRoots {
    // hostUsbSource.sysfsRoot is SYSROOT/bus/usb/devices; the choice reads SYSROOT's PCI side too.
    const usbRoot = this.hostUsbSource.sysfsRoot;
    const sysfsRoot = usbRoot === undefined ? undefined : path.resolve(usbRoot, '..', '..', '..');
    return { ...(sysfsRoot === undefined ? {} : { sysfsRoot }), ...(this.hostUsbSource.procRoot === undefined ? {} : { procRoot: this.hostUsbSource.procRoot }) };
  }

  /** How the devices the rules took at start reach the guest (controller or emulated path), with why. */
  get usbPathChoicesAtStart(): readonly UsbStartChoice[] {
    return this.usbPathChoices;
  }

  /** Replaces the auto-attach rules of the running VM (the manager saved new ones); they apply to devices that appear from now on. */
  setUsbRules(rules: UsbRule[]): void {
    if (this.config.usb === undefined) throw new UsbRequestError('invalid-state', 'this VM has no USB controller (its config has no "usb" section)');
    this.config.usb.rules = rules;
    if (this.autoAttach !== null) this.autoAttach.rules = rules;
    if (rules.length > 0) this.watchHostUsb();
  }

  private heldHostUsb(): (HeldDevice & { handle: number })[] {
    return [...this.hostUsb].map(([handle, e]) => ({
      handle, sysfsName: e.passthrough.info.sysfsName, busNumber: e.passthrough.info.busNumber, deviceAddress: e.passthrough.info.deviceAddress,
      vendorId: e.passthrough.info.vendorId, productId: e.passthrough.info.productId, guestPort: e.port, force: e.force,
    }));
  }

  private onHostUsbList(devices: HostUsbDeviceInfo[]): void {
    if (this.autoAttach === null || (this._state !== 'running' && this._state !== 'paused')) return;
    for (const action of this.autoAttach.update(devices, this.heldHostUsb(), Date.now())) this.queueAutoAttach(action);
  }

  private queueAutoAttach(action: AutoAttachAction): void {
    this.autoQueue = this.autoQueue.then(() => this.runAutoAttach(action)).catch((e: Error) => { this.emit('log', `USB: ${e.message}`); });
  }

  private async runAutoAttach(a: AutoAttachAction): Promise<void> {
    if (this._state !== 'running' && this._state !== 'paused') return;
    if (a.kind === 'gone') {
      const held = this.heldHostUsb().find((h) => h.sysfsName === a.sysfsName);
      if (held === undefined) return;
      // A list read while sysfs was changing may miss a device: look once more before letting it go.
      let still = false;
      try {
        still = this.hostUsbSource.list().some((d) => d.sysfsName === held.sysfsName && d.busNumber === held.busNumber && d.deviceAddress === held.deviceAddress);
      } catch {
        // Unreadable: go by the list that said it left.
      }
      if (!still) await this.unplugGone(held.handle);
      return;
    }
    // A device that just appeared may still be enumerating (node-usb cannot find or open it
    // yet): try again a few times, over about 5 s, before giving up.
    let failure: unknown = null;
    for (const waitMs of ENUMERATION_RETRY_MS) {
      if (waitMs > 0) {
        await new Promise((resolve) => setTimeout(resolve, waitMs));
        if (this._state !== 'running' && this._state !== 'paused') return;
      }
      try {
        const state = await this.attachHostUsb(a.sysfsName, a.port, a.force);
        this.emit('log', `USB: ${a.why}: attached on port ${state.port}${failure === null ? '' : ' (once it had finished enumerating)'}`);
        return;
      } catch (e) {
        failure = e;
        if (a.port !== undefined && !/is in VM|host needs|no host USB device|permission|is gone/i.test((e as Error).message)) {
          // Its old guest port is taken (or of the other speed now): any free port will do.
          try {
            const state = await this.attachHostUsb(a.sysfsName, undefined, a.force);
            this.emit('log', `USB: ${a.why}: attached on port ${state.port} (port ${a.port}: ${(e as Error).message})`);
            return;
          } catch (e2) {
            failure = e2;
          }
        }
      }
      if (!/is gone|no host USB device/i.test((failure as Error).message)) break;
    }
    this.emit('log', `USB: not taking host device ${a.sysfsName} (${a.why}): ${(failure as Error).message}`);
  }

  /** A host device in this VM left the host: remembered for re-enumeration, unplugged from the guest, its journal entry dropped. */
  private hostUsbGone(handle: number): void {
    const held = this.heldHostUsb().find((h) => h.handle === handle);
    if (held === undefined) return;
    this.autoAttach?.noteDeparted(held, Date.now());
    // libusb said so: no second look (sysfs may still list it for a moment).
    this.autoQueue = this.autoQueue.then(() => this.unplugGone(handle)).catch((e: Error) => { this.emit('log', `USB: ${e.message}`); });
  }

  /** Lists the host's devices every 250 ms until the re-enumeration window of a departure has passed. */
  private pollDuringWindow(): void {
    const windowMs = this.autoAttach?.windowMs ?? 0;
    if (windowMs <= 0) return;
    this.windowPollUntil = Date.now() + windowMs + 500;
    if (this.windowPoll !== null) return;
    this.windowPoll = setInterval(() => {
      if (Date.now() > this.windowPollUntil || this.stopHostUsbWatch === null) {
        if (this.windowPoll !== null) clearInterval(this.windowPoll);
        this.windowPoll = null;
        return;
      }
      this.hostUsbWatch.refresh();
    }, 250);
    this.windowPoll.unref();
  }

  private async unplugGone(handle: number): Promise<void> {
    const entry = this.hostUsb.get(handle);
    if (entry === undefined) return;
    this.pollDuringWindow();
    this.hostUsb.delete(handle);
    entry.passthrough.markGone();
    const name = entry.passthrough.info.sysfsName;
    if (entry.port > 0) {
      await this.usbRequest({ op: 'detach', port: entry.port }).catch((e: Error) => this.emit('log', `USB: unplugging host device ${name} from port ${entry.port} failed: ${e.message}`));
    }
    await this.giveBack(entry.passthrough);
    const window = this.autoAttach?.awaiting(name, Date.now()) ? `; it goes back to this VM if it comes back on host port ${name} within ${this.autoAttach.windowMs / 1000} s` : '';
    this.emit('log', `USB: host device ${name} left the host and was unplugged from port ${entry.port}${window}`);
  }

  private async giveBack(passthrough: HostUsbPassthrough): Promise<void> {
    const t = passthrough.timing;
    if (t.transfers > 0) {
      const us = (ms: number) => ((ms * 1000) / t.transfers).toFixed(0);
      this.emit('log', `USB: host device ${passthrough.info.sysfsName}: ${t.transfers} transfers, per transfer ${us(t.waitMs)} µs from SUBMIT record to libusb submit, ${us(t.hostMs)} µs in libusb (submit to completion)`);
    }
    const problems = await passthrough.release();
    for (const p of problems) this.emit('log', p);
    if (problems.length === 0) this.emit('log', `USB: host device ${passthrough.info.sysfsName} given back to the host`);
  }

  private releaseHostUsb(): void {
    const all = [...this.hostUsb.values()];
    this.hostUsb.clear();
    this.passthroughOut = [];
    if (all.length > 0) this.hostUsbReleased = Promise.all(all.map((h) => this.giveBack(h.passthrough))).then(() => undefined);
  }

  /** Settles once the host devices of the last stop are back with the host: wait for it before the process exits. */
  hostUsbReleased: Promise<void> = Promise.resolve();

  /** Host devices being given back finish before the process may exit. */
  get hostUsbCount(): number {
    return this.hostUsb.size;
  }

  /**
   * A passthrough record to the machine, in order. It joins the channel's backlog only while
   * that is short: the backlog drops input past its limit, and transfer data must not be lost.
   */
  private sendPassthrough(kind: number, payload: Uint8Array): void {
    this.passthroughOut.push({ kind, payload });
    this.pumpPassthrough();
  }

  private pumpPassthrough(): void {
    while (this.passthroughOut.length > 0 && this.backlogBytes < PASSTHROUGH_BACKLOG_BYTES) {
      const next = this.passthroughOut.shift() as { kind: number; payload: Uint8Array };
      this.sendToMachine(XHCI_CHANNEL_TARGET, next.kind, next.payload);
    }
    if (this.passthroughOut.length > 0 && this.passthroughTimer === null) {
      this.passthroughTimer = setTimeout(() => {
        this.passthroughTimer = null;
        this.pumpPassthrough();
      }, 1);
    }
  }

  /** Presses and releases keys on the VM's first USB keyboard; resolves once the guest could take them all. */
  async sendUsbKeys(events: { usage: number; down: boolean }[]): Promise<void> {
    if (this._state !== 'running') throw new UsbRequestError('invalid-state', `cannot type into a VM that is ${this._state}`);
    await this.usbRequest({ op: 'keys', events });
  }

  /** Why no USB request can be made now, or null. */
  private usbRefusal(): UsbRequestError | null {
    if (this.config.usb?.controller !== 'xhci') return new UsbRequestError('invalid-state', 'this VM has no USB controller (its config has no "usb" section)');
    if (this._state === 'stopped' || this._state === 'stopping') return new UsbRequestError('invalid-state', `the VM is ${this._state}`);
    return null;
  }

  private usbRequest(body: UsbRequestBody): Promise<UsbAnswer> {
    const refusal = this.usbRefusal();
    if (refusal) return Promise.reject(refusal);
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
    if (kind === USB_KIND.SERIAL_OUTPUT) {
      this.onUsbSerialOutput(payload);
      return;
    }
    if (isPassthroughKind(kind)) {
      if (payload.length >= 4) this.hostUsb.get(new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0, true))?.passthrough.onMachineRecord(kind, payload);
      return;
    }
    if (kind === USB_KIND.CAPTURE) {
      this.usbCaptures.record(payload);
      return;
    }
    const reply = decodeUsbMessage(payload) as UsbReply | null;
    if (kind !== USB_KIND.REPLY || reply === null) return;
    // Whoever asked, the machine's devices changed: a relaunch plugs in what is there now.
    if (reply.ok && Array.isArray(reply.plugged)) {
      this.usbPlugged = reply.plugged;
      this.reconcileUsbSerials(reply);
    }
    if (reply.ok && Array.isArray(reply.ports)) this.usbCaptures.setPorts(reply.ports);
    const waiter = this.usbRequests.get(reply.id);
    if (!waiter) return;
    this.usbRequests.delete(reply.id);
    clearTimeout(waiter.timer);
    if (reply.ok) waiter.resolve({ ports: reply.ports, port: reply.port, capture: reply.capture });
    else waiter.reject(new UsbRequestError(reply.code, reply.error));
  }

  /**
   * Closes the backends of serial ports no longer plugged in (unplugged), and names each
   * serial port's endpoint in the reply's port list.
   */
  private reconcileUsbSerials(reply: UsbReply & { ok: true }): void {
    const links = new Map<number, number>();
    for (const d of reply.plugged) if (d.kind === 'serial' && d.link !== undefined && d.port !== undefined) links.set(d.link, d.port);
    for (const [link, endpoint] of this.usbSerials) {
      if (links.has(link) || this.usbSerialsPending.has(link)) continue;
      endpoint?.close();
      this.usbSerials.delete(link);
    }
    for (const [link, port] of links) {
      const device = reply.ports.find((p) => p.port === port)?.device;
      if (device) device.endpoint = this.usbSerials.get(link)?.description ?? 'none';
    }
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
