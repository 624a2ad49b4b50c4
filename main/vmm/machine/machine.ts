// One virtual machine, living on the machine thread. This thread owns the device
// models and runs vCPU 0 itself, so vCPU 0's exits are handled with no thread hop.
// APs run in their own workers and hand their I/O exits here through mailboxes.
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import * as libc from '../../../native/libc';
// From the module itself, not the native/ index, whose re-exports are getters (hot path).
import {
  CoalescedRing, KVM_CAP, KvmSystem, KvmVcpu, type KvmVm, RUN, RUN_AGAIN, RUN_KICKED,
} from '../../../native/kvm';
import { PCI_CONFIG_ADDRESS_PORT } from '../devices/pci/pci-bus';
import { cpuidFor } from './cpuid';
import { MachineTimers } from './timers';
import { MmioBus, PioBus } from '../devices/bus';
import type { MachineConfig } from '../config';
import type { HostNotification, KickWatch, KickWatcher, MachineContext } from '../devices/context';
import { ACTION, type Action, ExitDispatcher } from './exits';
import { GuestMemory, hostAddressOf, type MemoryRegion } from '../memory/guest-memory';
import { MemorySlots } from '../memory/slots';
import { buildPlatform, type Platform } from '../platform/platform';
import { prepareBoot } from '../boot';
import { pcIrqRoutes } from '../platform/mptable';
import { IrqRouting } from './irq-routing';
import { Doorbells } from './doorbells';
import { describeIoapicPins, describePic, describeVcpu } from './vcpu-dump';
import type { CounterSpec, StatsRegistry } from '../shared/stats';
import { machineStatsFrom, type MachineStats } from './machine-stats';
import { type Channel, type ChannelHandler, CHANNEL_TARGET, type Doorbell } from '../shared/channel';
import { encodeLineSettings, encodeModemControl, SERIAL_KIND } from '../shared/serial-messages';
import { ByteRing, COMMAND, ControlBlock, epochMs, kickVcpu, MAILBOX, STATE, type StartupTiming } from '../shared/control';

export type MachineEnd =
  | { reason: 'poweroff'; exitCode: number }
  /** cause: what asked for it, e.g. "a triple fault on vCPU 0". */
  | { reason: 'reset'; cause?: string }
  | { reason: 'stopped' }
  | { reason: 'error'; message: string };

export type { MachineStats } from './machine-stats';

export interface MachineChannels {
  control: ControlBlock;
  /** COM1..COM4 output rings, then the debug console. */
  rings: ByteRing[];
  /** The VM's statistics registry (made by the VM host, kept across resets). */
  stats: StatsRegistry;
  /** Rung when the VM host has something to look at: ring output, toHost records, a new timer deadline. */
  hostDoorbell: Doorbell;
  /** Records from the VM host (backend completions, serial input), drained by this thread. */
  fromHost: Channel;
  /** Records for the VM host; the channel rings hostDoorbell when it becomes non-empty. */
  toHost: Channel;
  /** Guest RAM (made by the VM host, kept across resets): the machine maps it, never allocates it. */
  ram: MemoryRegion[];
  /** Per NIC, the VM host's virtio-net data plane block, or null. */
  netDataPlanes?: (SharedArrayBuffer | null)[];
  /** Per disk of the config, the disk I/O thread's data plane block, or null. */
  diskDataPlanes?: (SharedArrayBuffer | null)[];
  post(message: MachineToHost): void;
}

export type MachineToHost =
  | {
    type: 'started'; cpus: number; ramBytes: number; runPages: { buffer: SharedArrayBuffer; offset: number }[];
    /** Milestones of this launch, the last one just before vCPU 0's first KVM_RUN. */
    timings: StartupTiming[];
    /** Every counter registered so far, in slot order. */
    statsSchema: CounterSpec[];
    /** Where KVM queues coalesced writes, so the host can kick vCPU 0 to apply stale ones. */
    coalescedRing: { buffer: SharedArrayBuffer; offset: number } | null;
  }
  | { type: 'log'; text: string }
  | { type: 'stats'; stats: MachineStats }
  /** Counters registered after 'started' (a BAR mapped, a first interrupt on a line): the whole schema. */
  | { type: 'stats-schema'; statsSchema: CounterSpec[] }
  | { type: 'ended'; end: MachineEnd; stats: MachineStats };

interface VcpuHandle {
  cpu: number;
  vcpu: KvmVcpu;
  worker: Worker | null;
  /** Settles when the AP thread has exited; made at spawn so an early exit is not missed. */
  exited: Promise<number> | null;
}

/** GSIs with a counter of their assertions (the IOAPIC's pins). */
const COUNTED_GSIS = 24;
const SCHEMA_CHECK_MS = 200;

export class Machine implements MachineContext {
  readonly config: MachineConfig;
  readonly pio: PioBus;
  readonly mmio: MmioBus;
  /** One object for the machine's life; its region list changes as ROMs and BARs come and go. */
  readonly memory = new GuestMemory();
  /** KVM memory slots behind `memory`'s regions. */
  readonly slots: MemorySlots;
  /** KVM's page of queued (coalesced) writes in vCPU 0's mapping, or 0 where KVM has none. */
  private readonly queuedWritesPage: number;
  private readonly slotOfRegion = new Map<MemoryRegion, number>();
  readonly cpuCount: number;
  readonly dispatcher: ExitDispatcher;
  /** KVM's GSI routing table: the PC's lines, and MSI routes with their irqfds. */
  readonly interrupts: IrqRouting;
  readonly doorbells: Doorbells;
  private readonly kvm: KvmSystem;
  private readonly vm: KvmVm;
  private readonly vcpus: VcpuHandle[] = [];
  private platform!: Platform;
  /** The registry as this launch found it: MachineStats reports this launch's counts. */
  private readonly baseline: Uint32Array;
  private readonly counts: Uint32Array;
  private readonly kickSlot: number;
  private readonly apExitSlot: number;
  private readonly msiSlot: number;
  /** Counter slot of each GSI's assertions (-1: registered on its first assertion). */
  private readonly irqSlots = new Int32Array(COUNTED_GSIS).fill(-1);
  /** Schema length the VM host last heard of, and the timer that checks for more. */
  private postedSchemaVersion = -1;
  private schemaTimer: NodeJS.Timeout | null = null;
  private exitCode = 0;
  private ended = false;
  private running = false;
  /** Device timers; a new earliest deadline is published for the VM host, which kicks vCPU 0 then. */
  private readonly timers = new MachineTimers((deadline) => {
    this.channels.control.timerDeadline = deadline;
    this.channels.hostDoorbell.ring();
  });
  private readonly unsentNotifications = new Map<string, { target: number; kind: number; payload: Uint8Array }>();
  /** Who handles records from the VM host, by target. */
  private readonly hostHandlers = new Map<number, (kind: number, payload: Uint8Array) => void>();
  private readonly routeFromHost: ChannelHandler = (target, kind, payload) => {
    const handler = this.hostHandlers.get(target);
    if (handler) handler(kind, payload);
    else this.log(`a host message for unknown target ${target} (kind ${kind}) was dropped`);
  };
  /** Start-up milestones; the machine thread adds its own before the constructor runs. */
  readonly timings: StartupTiming[] = [];

  constructor(config: MachineConfig, private readonly channels: MachineChannels) {
    this.config = config;
    this.cpuCount = config.cpus;
    const statistics = channels.stats;
    this.counts = statistics.counts;
    this.baseline = statistics.counts.slice();
    this.kickSlot = statistics.counter('vcpu', 'kicks');
    this.apExitSlot = statistics.counter('vcpu', 'ap-exits');
    this.msiSlot = statistics.counter('irq', 'msi');
    this.pio = new PioBus(statistics);
    this.mmio = new MmioBus(statistics);
    this.dispatcher = new ExitDispatcher(this.pio, this.mmio, statistics);
    this.kvm = new KvmSystem();
    this.vm = this.kvm.createVm();
    // Three pages below the BIOS for the TSS and the EPT identity map (Intel needs them).
    this.vm.setIdentityMapAddr(0xfeffc000n);
    this.vm.setTssAddr(0xfeffd000);
    this.vm.createIrqchip();
    // The PC wiring (ISA IRQ 0 on IOAPIC pin 2, as the ACPI/MP tables and SeaBIOS say) for
    // every boot kind; KVM's identity default would leave the PIT on pin 0.
    this.interrupts = new IrqRouting(this.vm, {
      lineRoutes: pcIrqRoutes(), maxRoutes: this.kvm.checkExtension(KVM_CAP.IRQ_ROUTING),
    });
    this.interrupts.commit();
    this.doorbells = new Doorbells(this.vm);
    this.vm.createPit2();
    if (process.env.PORTHOLE_PIT_DISCARD) this.vm.setPitReinject(false);
    const ringPage = this.kvm.checkExtension(KVM_CAP.COALESCED_MMIO);
    this.queuedWritesPage = ringPage > 0 && (ringPage + 1) * 4096 <= this.kvm.vcpuMmapSize() ? ringPage : 0;
    this.slots = new MemorySlots(
      (slot, flags, guestBase, size, hostAddr) => this.vm.setUserMemoryRegion(slot, BigInt(guestBase), size, hostAddr, flags),
      this.kvm.checkExtension(KVM_CAP.NR_MEMSLOTS),
    );
    this.timings.push({ label: 'vm-created', epochMs: epochMs() });
    const ramBytes = channels.ram.reduce((n, r) => n + r.size, 0);
    if (ramBytes !== config.memoryBytes) throw new Error(`the VM host gave ${ramBytes} bytes of RAM for a ${config.memoryBytes}-byte machine`);
    for (const region of channels.ram) this.addRegion(region);
    this.timings.push({ label: 'ram-allocated', epochMs: epochMs() });
  }

  // --- MachineContext -------------------------------------------------------
  setIrq(gsi: number, level: boolean): void {
    if (level && gsi >= 0 && gsi < COUNTED_GSIS) {
      let slot = this.irqSlots[gsi];
      if (slot < 0) slot = this.irqSlots[gsi] = this.statistics.counter('irq', `gsi-${gsi}`);
      Atomics.add(this.counts, slot, 1);
    }
    this.vm.irqLine(gsi, level);
  }
  signalMsi(addressLo: number, addressHi: number, data: number): void {
    Atomics.add(this.counts, this.msiSlot, 1);
    this.vm.signalMsi(addressLo, addressHi, data);
  }
  requestReset(): void {
    this.dispatcher.requestReset();
  }
  requestPowerOff(exitCode = 0): void {
    this.exitCode = exitCode;
    this.dispatcher.requestPowerOff();
  }
  get statistics(): StatsRegistry {
    return this.channels.stats;
  }
  log(text: string): void {
    this.channels.post({ type: 'log', text });
  }
  get netDataPlanes(): readonly (SharedArrayBuffer | null)[] {
    return this.channels.netDataPlanes ?? [];
  }
  get diskDataPlanes(): readonly (SharedArrayBuffer | null)[] {
    return this.channels.diskDataPlanes ?? [];
  }

  notifyHost(notification: HostNotification): void {
    // Line settings and modem lines are states: when the channel is full only the
    // latest of each kind per port is kept, and sent once there is room.
    const kind = notification.type === 'serial-line' ? SERIAL_KIND.LINE_SETTINGS : SERIAL_KIND.MODEM_CONTROL;
    const payload = notification.type === 'serial-line' ? encodeLineSettings(notification.settings) : encodeModemControl(notification.modem);
    const target = CHANNEL_TARGET.SERIAL + notification.port;
    this.unsentNotifications.delete(`${target}:${kind}`);
    if (this.sendToHost(target, kind, payload)) return;
    this.unsentNotifications.set(`${target}:${kind}`, { target, kind, payload });
    if (this.unsentNotifications.size === 1) void this.sendUnsentNotifications();
  }
  private async sendUnsentNotifications(): Promise<void> {
    while (this.unsentNotifications.size > 0 && !this.ended) {
      const [key, n] = this.unsentNotifications.entries().next().value as [string, { target: number; kind: number; payload: Uint8Array }];
      await this.channels.toHost.waitForSpace(n.payload.length);
      if (this.unsentNotifications.get(key) !== n) continue;
      if (this.sendToHost(n.target, n.kind, n.payload)) this.unsentNotifications.delete(key);
    }
  }
  serialRing(index: number): ByteRing {
    return this.channels.rings[index];
  }
  setTimer(delayMs: number, fn: () => void): () => void {
    return this.timers.set(delayMs, () => { if (!this.ended) fn(); });
  }
  /**
   * Routes the VM host's records for `target` to `handler` on this thread (a device's
   * host messages, a backend's completions). One handler per target.
   */
  onHostMessage(target: number, handler: (kind: number, payload: Uint8Array) => void): void {
    if (this.hostHandlers.has(target)) throw new Error(`channel target ${target} has a handler already`);
    this.hostHandlers.set(target, handler);
  }
  /** Watchers polled after every kick and exit (usbfs URBs the machine thread submitted). */
  private readonly kickWatchers = new Set<KickWatcher>();
  readonly kickWatch: KickWatch = {
    add: (w) => { this.kickWatchers.add(w); },
    remove: (w) => { this.kickWatchers.delete(w); },
  };
  private pollKickWatchers(kicked: boolean): void {
    for (const w of this.kickWatchers) w.poll(kicked);
  }
  /** Sends a record to the VM host; false when its channel is full (the caller keeps it and retries). */
  sendToHost(target: number, kind: number, payload?: Uint8Array): boolean {
    return this.channels.toHost.send(target, kind, payload);
  }
  /** Handles what the VM host sent. Returns true if the machine ended meanwhile. */
  private receiveFromHost(): boolean {
    if (this.channels.fromHost.empty) return false;
    try {
      this.channels.fromHost.receive(this.routeFromHost);
    } catch (e) {
      this.end({ reason: 'error', message: `host message: ${(e as Error).message}` });
    }
    return this.ended;
  }
  /** Out of KVM_RUN (paused, or between slices) the channel is drained from the event loop. */
  private async watchFromHost(): Promise<void> {
    while (!this.ended) {
      await this.channels.fromHost.waitForData();
      if (this.receiveFromHost()) return;
    }
  }
  /** Maps a region (RAM, a read-only ROM window, later BARs) into the guest, at any time. */
  addRegion(region: MemoryRegion): void {
    const slot = this.slots.add(region.guestBase, region.size, hostAddressOf(region), { readonly: region.readonly, name: region.name });
    try {
      this.memory.add(region);
    } catch (e) {
      this.slots.remove(slot);
      throw e;
    }
    this.slotOfRegion.set(region, slot);
  }
  /** Unmaps a region added by addRegion: its KVM slot is deleted, then devices stop seeing it. */
  removeRegion(region: MemoryRegion): void {
    const slot = this.slotOfRegion.get(region);
    if (slot === undefined) throw new Error(`memory region ${region.name} is not mapped`);
    this.slots.remove(slot);
    this.slotOfRegion.delete(region);
    this.memory.remove(region);
  }
  get kvmVm(): KvmVm {
    return this.vm;
  }
  get bsp(): KvmVcpu {
    return this.vcpus[0].vcpu;
  }
  get devices(): Platform {
    return this.platform;
  }

  // --- set-up -----------------------------------------------------------------
  async setup(): Promise<void> {
    this.platform = buildPlatform(this);
    try {
      await this.setupAfterPlatform();
    } catch (e) {
      // Release what the devices hold (image locks, an assigned function's BAR mmaps: a VFIO
      // device still mapped cannot be given back to its host driver).
      this.platform.close();
      throw e;
    }
  }

  private async setupAfterPlatform(): Promise<void> {
    const mmapSize = this.kvm.vcpuMmapSize();
    const cpuid = this.kvm.supportedCpuid();
    const tscDeadline = this.kvm.checkExtension(KVM_CAP.TSC_DEADLINE_TIMER) > 0;
    for (let cpu = 0; cpu < this.cpuCount; cpu++) {
      const vcpu = new KvmVcpu(this.vm.createVcpu(cpu), mmapSize);
      vcpu.setCpuid2(cpuidFor(cpuid, cpu, this.cpuCount, { tscDeadline }));
      this.vcpus.push({ cpu, vcpu, worker: null, exited: null });
    }
    if (this.queuedWritesPage > 0) {
      const bsp = this.vcpus[0].vcpu;
      this.dispatcher.coalesced = new CoalescedRing(bsp.runBuffer, bsp.runBytes.byteOffset + this.queuedWritesPage * 4096);
      this.coalescePciAddressWrites();
    }
    this.timings.push({ label: 'vcpus-created', epochMs: epochMs() });
    await prepareBoot(this, this.vcpus.map((v) => v.vcpu));
    this.timings.push({ label: 'boot-loaded', epochMs: epochMs() });
  }

  /**
   * Writes to PCI's CONFIG_ADDRESS (0xcf8) need no exit: KVM queues them, and they are
   * applied before the data access (0xcfc, an exit) that uses them, as QEMU does. Linux
   * on an AMD family 0xf CPU probes every bus for a GART bridge: about half its 34,000
   * boot-time exits here are those writes. Skipped where KVM lacks coalesced PIO.
   */
  private coalescePciAddressWrites(): void {
    if (!this.platform.pci || this.kvm.checkExtension(KVM_CAP.COALESCED_PIO) <= 0) return;
    try {
      this.vm.registerCoalescedPio(PCI_CONFIG_ADDRESS_PORT, 4);
    } catch (e) {
      this.log(`coalesced PIO refused (${(e as Error).message}); 0xcf8 writes exit as usual`);
    }
  }

  readonly queuedWrites: NonNullable<MachineContext['queuedWrites']> = {
    add: (address, size) => {
      if (this.queuedWritesPage === 0) return false;
      try {
        this.vm.registerCoalescedMmio(address, size);
        return true;
      } catch (e) {
        this.log(`queued writes at 0x${address.toString(16)} refused (${(e as Error).message}); they exit as usual`);
        return false;
      }
    },
    remove: (address, size) => this.vm.unregisterCoalescedMmio(address, size),
    settle: () => this.dispatcher.applyQueuedWrites(),
  };

  start(): void {
    const control = this.channels.control;
    libc.installKickHandler();
    libc.setThreadName('vcpu0');
    control.setTid(0, libc.gettid());
    for (const h of this.vcpus.slice(1)) {
      h.worker = new Worker(path.join(__dirname, '..', 'vcpu', 'ap-worker.js'), {
        workerData: {
          cpu: h.cpu, fd: h.vcpu.fd, runBuffer: h.vcpu.runBuffer, runOffset: h.vcpu.runBytes.byteOffset,
          runSize: h.vcpu.runBytes.length, control: control.buffer,
          bspRunBuffer: this.bsp.runBuffer, bspRunOffset: this.bsp.runBytes.byteOffset,
        },
      });
      h.worker.on('error', (e) => this.end({ reason: 'error', message: `vCPU ${h.cpu} thread failed: ${e.message}` }));
      const worker = h.worker;
      h.exited = new Promise((resolve) => worker.once('exit', resolve));
    }
    this.running = true;
    control.setState(STATE.RUNNING);
    // vCPU 0 enters the guest in the next turn of this thread's event loop.
    this.timings.push({ label: 'first-kvm-run', epochMs: epochMs() });
    this.channels.post({
      type: 'started', cpus: this.cpuCount, ramBytes: this.memory.ramSize,
      runPages: this.vcpus.map((h) => ({ buffer: h.vcpu.runBuffer, offset: h.vcpu.runBytes.byteOffset })),
      timings: this.timings,
      statsSchema: this.postSchema(),
      coalescedRing: this.dispatcher.coalesced && { buffer: this.dispatcher.coalesced.buffer, offset: this.dispatcher.coalesced.byteOffset },
    });
    setImmediate(() => this.runSlice());
    // A few times a second, between slices: counters registered while the guest runs.
    this.schemaTimer = setInterval(() => this.postNewCounters(), SCHEMA_CHECK_MS);
    this.schemaTimer.unref();
    void this.watchFromHost();
  }

  /** Called when the host posts a message: it already kicked vCPU 0, so we are in the event loop. */
  resume(): void {
    if (this.ended) return;
    if (this.channels.control.command === COMMAND.RUN && this.channels.control.state === STATE.PAUSED) {
      this.channels.control.setState(STATE.RUNNING);
      setImmediate(() => this.runSlice());
    }
  }

  /**
   * Logs vCPU 0's registers, LAPIC state and stack. The host kicked it to post this
   * message, so it is outside KVM_RUN; APs are left alone (they may be inside it).
   */
  dumpVcpus(): void {
    if (this.ended) return;
    try {
      this.log(describeVcpu(0, this.bsp, this.memory));
      this.log(`  ${describePic('PIC master', this.vm.getIrqchip(0))}; ${describePic('PIC slave', this.vm.getIrqchip(1))}`);
      // Where a device's interrupt went: its line, the IOAPIC pin, then the LAPIC above.
      const pins = [...new Set(this.platform.models.flatMap((m) => m.irqs ?? []))].sort((a, b) => a - b);
      if (pins.length > 0) this.log(`  IOAPIC ${describeIoapicPins(this.vm.getIrqchip(2), pins)}`);
      for (const m of this.platform.models) if (m.describeState) this.log(`  ${m.name}: ${m.describeState()}`);
      const st = this.stats();
      this.log(`  exits so far: ${JSON.stringify(st.exits)} kicks ${st.kicks}; devices: ${st.devices.map((d) => `${d.name} ${d.reads}r/${d.writes}w`).join(', ')}`);
    } catch (e) {
      this.log(`vCPU 0 dump failed: ${(e as Error).message}`);
    }
  }

  /** The registry's schema, remembered as known to the VM host. */
  private postSchema(): CounterSpec[] {
    const schema = this.statistics.schema;
    this.postedSchemaVersion = this.statistics.version;
    return schema;
  }

  /** Tells the VM host about counters registered since it last heard (so its samples name them). */
  private postNewCounters(): void {
    if (this.statistics.version !== this.postedSchemaVersion) {
      this.channels.post({ type: 'stats-schema', statsSchema: this.postSchema() });
    }
  }

  /** This launch's counts, read from the statistics registry. */
  stats(): MachineStats {
    return machineStatsFrom(this.statistics.schema, this.counts, this.baseline);
  }

  // --- the run loop -------------------------------------------------------------
  private runSlice(): void {
    if (this.ended) return;
    const control = this.channels.control;
    // Commands and AP requests are checked only at slice start and after a kick: whoever
    // sets them also sets immediate_exit, so KVM_RUN returns at once and nothing waits.
    const command = control.command;
    if (command !== COMMAND.RUN) return this.onCommand(command);
    // The host kicks vCPU 0 when queued writes sit unapplied (a guest halted after one).
    const queued = this.dispatcher.drainCoalesced();
    if (queued !== ACTION.CONTINUE) return this.onAction(queued);
    // Host records and due timers: the VM host kicks vCPU 0 for both, so they come here.
    if (this.receiveFromHost()) return;
    if (this.kickWatchers.size !== 0) this.pollKickWatchers(false);
    this.timers.runDue();
    if (control.apPending !== 0 && this.serviceAps()) return;
    const vcpu = this.vcpus[0].vcpu;
    const run = vcpu.run;
    const bytes = vcpu.runBytes;
    const dispatcher = this.dispatcher;
    try {
      for (let budget = 0; budget < 8192; budget++) {
        const r = vcpu.runOnce();
        if (r !== 0) {
          if (r === RUN_AGAIN) continue;
          // Kicked: clear immediate_exit and let the event loop deliver what the host sent.
          bytes[RUN.IMMEDIATE_EXIT] = 0;
          Atomics.add(this.counts, this.kickSlot, 1);
          // A usbfs completion signal: its transfer completes (and interrupts the guest) now,
          // not one event-loop turn later.
          if (this.kickWatchers.size !== 0) this.pollKickWatchers(true);
          break;
        }
        const action = dispatcher.handle(run, bytes, 0);
        if (action !== ACTION.CONTINUE) return this.onAction(action);
        // A completion signal that came while this thread ran JavaScript kicked nothing.
        if (this.kickWatchers.size !== 0) this.pollKickWatchers(false);
      }
    } catch (e) {
      return this.end({ reason: 'error', message: (e as Error).message });
    }
    setImmediate(() => this.runSlice());
  }

  /** Handles pending AP exits. Returns true if the machine ended. */
  private serviceAps(): boolean {
    const control = this.channels.control;
    for (const h of this.vcpus) {
      if (h.cpu === 0 || control.mailbox(h.cpu) !== MAILBOX.REQUEST) continue;
      Atomics.add(this.counts, this.apExitSlot, 1);
      const action = this.dispatcher.handle(h.vcpu.run, h.vcpu.runBytes, h.cpu);
      control.completeApExit(h.cpu, MAILBOX.DONE);
      if (action !== ACTION.CONTINUE) {
        this.onAction(action);
        return true;
      }
    }
    return false;
  }

  private onCommand(command: number): void {
    const control = this.channels.control;
    if (command === COMMAND.PAUSE) {
      control.setState(STATE.PAUSED);
      // Keep serving APs that were mid-exit when the pause came.
      this.serviceAps();
      return;
    }
    this.end({ reason: 'stopped' });
  }

  private onAction(action: Action): void {
    if (action === ACTION.RESET) this.end({ reason: 'reset', cause: this.dispatcher.resetCause });
    else if (action === ACTION.POWEROFF) this.end({ reason: 'poweroff', exitCode: this.exitCode });
    else this.end({ reason: 'error', message: this.dispatcher.errorMessage });
  }

  /** Stops every vCPU (none may stay in KVM_RUN), frees KVM objects and reports the end. */
  private end(end: MachineEnd): void {
    if (this.ended) return;
    this.ended = true;
    if (this.schemaTimer) clearInterval(this.schemaTimer);
    this.postNewCounters();
    this.timers.clear();
    const control = this.channels.control;
    control.setCommand(COMMAND.STOP);
    const waits: Promise<number>[] = [];
    for (const h of this.vcpus.slice(1)) {
      kickVcpu(h.vcpu.runBuffer, h.vcpu.runBytes.byteOffset, control.tid(h.cpu));
      if (control.mailbox(h.cpu) === MAILBOX.REQUEST) control.completeApExit(h.cpu, MAILBOX.CANCELLED);
      if (h.exited) waits.push(h.exited);
    }
    control.setTid(0, 0);
    void Promise.all(waits).then(() => {
      for (const h of this.vcpus) h.vcpu.close();
      // Image files and their locks: the next launch (a reset) opens them again.
      this.platform?.close();
      this.vm.close();
      this.interrupts.close();
      this.doorbells.close();
      this.kvm.close();
      control.setState(STATE.STOPPED);
      this.channels.post({ type: 'ended', end, stats: this.stats() });
    });
  }
}
