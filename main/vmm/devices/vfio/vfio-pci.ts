// The vfio-pci device model: a host PCI function as the guest sees it. Identity and capability
// bodies are passed through to the host function; the BARs, ROM BAR, command register's decode
// bits, interrupt line, the capability chain's links and the MSI-X capability are emulated (the
// guest places BARs in its own address space and programs MSI-X messages for its own interrupt
// controller). A function with MSI-X has its MSI capability left out of the chain; one without
// gets an emulated MSI capability (64-bit, unmasked) where the host's was, if that fits.
// Interrupts need no JavaScript: INTx is a resampling KVM irqfd on the GSI the guest's PIRQ
// steering gives the pin (VFIO signals it, KVM's resample eventfd unmasks it in VFIO), MSI-X
// vectors are the capability's irqfd routes handed to VFIO. BAR parts the host lets us mmap
// become KVM memory slots while the BAR decodes; the rest (and the MSI-X table and PBA pages)
// exit and are forwarded. Not here: extended config space (0x100 on).
import { allOnes, type IoDevice } from '../io-device';
import type { InterruptRouter, LineIrqfd } from '../interrupts';
import { MSIX_CAP_LENGTH, MsixCapability, type MsixOptions } from '../pci/msix';
import { ConfigWriteResult, MSI_CAP_LENGTH, MsiCapability, PCI_BAR_COUNT, PCI_CAP_ID, PCI_CFG, PCI_COMMAND, PCI_ROM_BAR, PciDevice, type BarKind } from '../pci/pci-device';

/** What the model needs of the host function (native/vfio.ts's VfioDevice in production, a fake in tests). */
export interface VfioPciHost {
  /** Host configuration space, little-endian, 1, 2 or 4 bytes inside one dword. */
  readConfig(offset: number, size: 1 | 2 | 4): number;
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void;
  /** The size of region `index` (BARs 0..5, ROM 6); 0 where the function has none. */
  regionSize(index: number): number;
  readRegion(index: number, offset: number, size: 1 | 2 | 4): number;
  writeRegion(index: number, offset: number, size: 1 | 2 | 4, value: number): void;
  /** INTx on eventfds (VFIO_DEVICE_SET_IRQS): `trigger` is signalled when the function asserts INTx (VFIO masks it then), a write to `unmask` unmasks it. null: INTx off. */
  setIntx?(fds: { trigger: number; unmask: number } | null): void;
  /** MSI-X: vector i signals fds[i]. null: MSI-X off. */
  setMsix?(fds: number[] | null): void;
  /** MSI: vector i signals fds[i] (as many as the guest enabled). null: MSI off. */
  setMsi?(fds: number[] | null): void;
  /** The parts of region `index` that may be mmap'd (offset, size; page-aligned), [] for none. */
  mmapAreas?(index: number): { offset: number; size: number }[];
  /** mmaps part of a region (an area mmapAreas gave). */
  mapRegion?(index: number, offset: number, size: number): { address: bigint; unmap(): void };
}

/** KVM memory slots (memory/slots.ts's MemorySlots on the machine). */
export interface BarSlots {
  add(guestBase: number, size: number, hostAddr: bigint, opts: { name: string }): number;
  remove(slot: number): void;
}

export const PAGE_SIZE = 4096;

/**
 * The parts of a BAR that become KVM memory slots: the host's mmap'able areas inside its
 * `hostSize` bytes, page-aligned, without the pages `trapped` ranges touch (the MSI-X table
 * and PBA, which the emulated capability serves). Sorted, non-overlapping.
 */
export function barMmapPlan(hostSize: number, areas: readonly { offset: number; size: number }[], trapped: readonly { offset: number; size: number }[]): { offset: number; size: number }[] {
  const cuts = trapped.filter((t) => t.size > 0).map((t) => ({
    start: Math.floor(t.offset / PAGE_SIZE) * PAGE_SIZE, end: Math.ceil((t.offset + t.size) / PAGE_SIZE) * PAGE_SIZE,
  }));
  const out: { offset: number; size: number }[] = [];
  for (const a of areas) {
    if (!Number.isSafeInteger(a.offset) || !Number.isSafeInteger(a.size) || a.offset < 0 || a.size <= 0) continue;
    let start = Math.ceil(a.offset / PAGE_SIZE) * PAGE_SIZE;
    const end = Math.floor(Math.min(a.offset + a.size, hostSize) / PAGE_SIZE) * PAGE_SIZE;
    const pieces: [number, number][] = [];
    for (const c of [...cuts].sort((x, y) => x.start - y.start)) {
      if (c.end <= start || c.start >= end) continue;
      if (c.start > start) pieces.push([start, c.start]);
      start = Math.max(start, c.end);
    }
    if (start < end) pieces.push([start, end]);
    for (const [s, e] of pieces) out.push({ offset: s, size: e - s });
  }
  out.sort((x, y) => x.offset - y.offset);
  return out.filter((p, i) => i === 0 || p.offset >= out[i - 1].offset + out[i - 1].size);
}

const PASSTHROUGH = 1;

function nextPowerOfTwo(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/** A trapped BAR: the MSI-X table and PBA go to the capability, the rest to the host region. */
class BarTrap implements IoDevice {
  constructor(readonly name: string, private readonly owner: VfioPciDevice, private readonly index: number, private readonly hostSize: number) {}

  read(offset: number, size: number): number {
    const msix = this.owner.msix?.readBar(this.index, offset, size) ?? null;
    if (msix !== null) return msix;
    if (offset + size > this.hostSize) return allOnes(size);
    return this.owner.host.readRegion(this.index, offset, size as 1 | 2 | 4);
  }

  write(offset: number, size: number, value: number): void {
    if (this.owner.msix?.writeBar(this.index, offset, size, value >>> 0)) return;
    if (offset + size > this.hostSize) return;
    this.owner.host.writeRegion(this.index, offset, size as 1 | 2 | 4, value >>> 0);
  }

  read64(offset: number, halves: Uint32Array): void {
    halves[0] = this.read(offset, 4);
    halves[1] = this.read(offset + 4, 4);
  }

  write64(offset: number, low: number, high: number): void {
    this.write(offset, 4, low);
    this.write(offset + 4, 4, high);
  }
}

export interface VfioPciOptions {
  /** MSI-X routes (KVM irqfd) for the emulated capability. */
  msix?: Pick<MsixOptions, 'router' | 'statistics'>;
  /** Resampling line irqfds for INTx; without one (or without host.setIntx) INTx stays off. */
  intx?: Pick<InterruptRouter, 'lineIrqfd'>;
  /** KVM memory slots for mmap'able BAR parts; without them every BAR access exits. */
  slots?: BarSlots;
  /** Whether the guest sees the host's expansion ROM (default true). */
  romBar?: boolean;
  log?: (text: string) => void;
}

interface MappedArea {
  offset: number;
  size: number;
  address: bigint;
  unmap(): void;
  /** The KVM slot while the BAR decodes, else -1. */
  slot: number;
}

export class VfioPciDevice extends PciDevice {
  readonly msix: MsixCapability | null;
  /** Per config byte: PASSTHROUGH where reads and writes go to the host. */
  private readonly access = new Uint8Array(256);
  /** The host capabilities the guest sees, in chain order: [id, offset]. */
  readonly capabilities: [number, number][] = [];

  /** The resampling irqfd INTx is on now (null: INTx off). */
  private intxIrqfd: LineIrqfd | null = null;
  /** What VFIO delivers now: MSI-X, MSI (with this many vectors) or neither (INTx, if wired). */
  private mode: 'msix' | 'msi' | 'none' = 'none';
  private msiVectorsOn = 0;
  /** The emulated MSI capability, for a function without MSI-X (null: none shown). */
  readonly msi: MsiCapability | null;
  /** Per BAR, its mmap'd parts (mapped into the guest while the BAR decodes). */
  private readonly areas: MappedArea[][] = [];
  private closed = false;

  constructor(name: string, readonly host: VfioPciHost, private readonly options: VfioPciOptions = {}) {
    super(name, {
      vendorId: host.readConfig(PCI_CFG.VENDOR_ID, 2), deviceId: host.readConfig(PCI_CFG.DEVICE_ID, 2),
      classCode: host.readConfig(PCI_CFG.REVISION, 4) >>> 8, revision: host.readConfig(PCI_CFG.REVISION, 1),
      subsystemVendorId: host.readConfig(PCI_CFG.SUBSYSTEM_VENDOR_ID, 2), subsystemId: host.readConfig(PCI_CFG.SUBSYSTEM_ID, 2),
      interruptPin: Math.min(host.readConfig(PCI_CFG.INTERRUPT_PIN, 1), 4),
    });
    this.defineHostBars(options.romBar ?? true);
    const msiAt: { at: number; vectors: number } = { at: -1, vectors: 0 };
    this.msix = this.copyCapabilities(options, msiAt);
    this.msi = this.msix === null && msiAt.at >= 0 && this.host.setMsi !== undefined
      ? new MsiCapability(this, msiAt.vectors, options.msix?.router ?? null, msiAt.at) : null;
    if (this.msi !== null) this.capabilities.push([PCI_CAP_ID.MSI, msiAt.at]);
    this.mapBarAreas();
    // The host function decodes its BARs for our traps whatever the guest's command register says.
    this.syncHostCommand();
  }

  private defineHostBars(romBar: boolean): void {
    for (let i = 0; i < PCI_BAR_COUNT; i++) {
      const raw = this.host.readConfig(PCI_CFG.BAR0 + i * 4, 4);
      const hostSize = this.host.regionSize(i);
      const kind: BarKind = raw & 1 ? 'io' : ((raw >>> 1) & 3) === 2 ? 'mem64' : 'mem32';
      if (hostSize > 0 && !(kind === 'io' && hostSize > 256) && !(kind === 'mem64' && i === PCI_BAR_COUNT - 1)) {
        const size = Math.max(nextPowerOfTwo(hostSize), kind === 'io' ? 4 : 16);
        const trap = new BarTrap(`${this.name}/bar${i}`, this, i, hostSize);
        this.defineBar(i, { kind, size, prefetchable: (raw & 8) !== 0, ...(kind === 'io' ? { io: trap } : { mmio: trap }) });
      }
      if (kind === 'mem64') i++;
    }
    const rom = romBar ? this.host.regionSize(PCI_ROM_BAR) : 0;
    if (rom > 0) {
      const trap = new BarTrap(`${this.name}/rom`, this, PCI_ROM_BAR, rom);
      this.defineBar(PCI_ROM_BAR, { kind: 'mem32', size: Math.max(nextPowerOfTwo(rom), 2048), mmio: { name: trap.name, read: (o, s) => trap.read(o, s), write: () => {} } });
    }
  }

  /** Rebuilds the host's capability chain (without MSI) with the same offsets; returns the emulated MSI-X capability. */
  private copyCapabilities(options: VfioPciOptions, msiAt: { at: number; vectors: number }): MsixCapability | null {
    const found: [number, number][] = [];
    const seen = new Set<number>();
    if (this.host.readConfig(PCI_CFG.STATUS, 2) & 0x10) {
      let at = this.host.readConfig(PCI_CFG.CAPABILITY_LIST, 1) & 0xfc;
      while (at >= 0x40 && !seen.has(at)) {
        seen.add(at);
        found.push([this.host.readConfig(at, 1), at]);
        at = this.host.readConfig(at + 1, 1) & 0xfc;
      }
    }
    const offsets = found.map(([, o]) => o).sort((a, b) => a - b);
    const lengthOf = (o: number) => (offsets.find((n) => n > o) ?? 0x100) - o;
    let msix: MsixCapability | null = null;
    for (const [id, at] of found) {
      if (id === PCI_CAP_ID.MSI) {
        // Shown (emulated) only if the function has no MSI-X and the host's space fits ours.
        if (msiAt.at < 0 && lengthOf(at) >= MSI_CAP_LENGTH) {
          msiAt.at = at;
          msiAt.vectors = 2 ** Math.min((this.host.readConfig(at + 2, 2) >> 1) & 7, 5);
        }
        continue;
      }
      if (id === PCI_CAP_ID.MSIX && msix === null && lengthOf(at) >= MSIX_CAP_LENGTH) {
        const control = this.host.readConfig(at + 2, 2);
        const table = this.host.readConfig(at + 4, 4);
        const pba = this.host.readConfig(at + 8, 4);
        try {
          msix = new MsixCapability(this, {
            vectors: (control & 0x7ff) + 1, tableBar: table & 7, tableOffset: (table & ~7) >>> 0, pbaBar: pba & 7, pbaOffset: (pba & ~7) >>> 0,
          }, { ...options.msix, capabilityOffset: at });
          this.capabilities.push([id, at]);
        } catch {
          // A table outside its BAR: the guest gets no MSI-X rather than a broken one.
        }
        continue;
      }
      const length = Math.min(lengthOf(at), 0x100 - at);
      if (length < 2) continue;
      this.addCapability(id, length, at);
      for (let i = 2; i < length; i++) this.access[at + i] = PASSTHROUGH;
      this.capabilities.push([id, at]);
    }
    return msix;
  }

  private syncHostCommand(): void {
    const host = this.host.readConfig(PCI_CFG.COMMAND, 2);
    const passed = PCI_COMMAND.MASTER | PCI_COMMAND.INTX_DISABLE;
    const want = (host & ~passed) | (this.command & passed) | PCI_COMMAND.MEMORY | PCI_COMMAND.IO;
    if (want !== host) this.host.writeConfig(PCI_CFG.COMMAND, 2, want);
  }

  /** mmaps the BARs' mappable parts (slots come when the guest makes a BAR decode). */
  private mapBarAreas(): void {
    if (!this.options.slots || !this.host.mmapAreas || !this.host.mapRegion) return;
    for (let i = 0; i < PCI_BAR_COUNT; i++) {
      const spec = this.barSpec(i);
      this.areas[i] = [];
      if (!spec || spec.kind === 'io') continue;
      const trapped = this.msix === null ? [] : [
        ...(this.msix.tableBar === i ? [{ offset: this.msix.tableOffset, size: this.msix.tableSize }] : []),
        ...(this.msix.pbaBar === i ? [{ offset: this.msix.pbaOffset, size: this.msix.pbaSize }] : []),
      ];
      let plan: { offset: number; size: number }[];
      try {
        plan = barMmapPlan(this.host.regionSize(i), this.host.mmapAreas(i), trapped);
      } catch (e) {
        this.options.log?.(`${this.name}: BAR ${i} is trapped (${(e as Error).message})`);
        continue;
      }
      for (const p of plan) {
        try {
          const m = this.host.mapRegion(i, p.offset, p.size);
          this.areas[i].push({ offset: p.offset, size: p.size, address: m.address, unmap: () => m.unmap(), slot: -1 });
        } catch (e) {
          this.options.log?.(`${this.name}: BAR ${i} +0x${p.offset.toString(16)} stays trapped: ${(e as Error).message}`);
        }
      }
    }
  }

  /** The BAR parts mapped as KVM slots now: [bar, offset, size, guest address]. */
  get slotMappings(): [number, number, number, number][] {
    const out: [number, number, number, number][] = [];
    this.areas.forEach((list, bar) => {
      const base = this.barAddress(bar);
      for (const a of list) if (a.slot >= 0 && base !== null) out.push([bar, a.offset, a.size, base + a.offset]);
    });
    return out;
  }

  protected override barMoved(index: number, address: number | null): void {
    const slots = this.options.slots;
    const list = this.areas[index];
    if (!slots || !list) return;
    for (const a of list) {
      if (a.slot >= 0) slots.remove(a.slot);
      a.slot = -1;
    }
    if (address === null || this.closed) return;
    for (const a of list) {
      try {
        a.slot = slots.add(address + a.offset, a.size, a.address, { name: `${this.name}/bar${index}+${a.offset.toString(16)}` });
      } catch (e) {
        // An overlap or a full slot table: the trap still serves the range.
        this.options.log?.(`${this.name}: BAR ${index} +0x${a.offset.toString(16)} at 0x${(address + a.offset).toString(16)} exits instead: ${(e as Error).message}`);
      }
    }
  }

  override attached(): void {
    this.bus?.onIntxRouteChange?.(() => this.updateInterrupts());
    this.updateInterrupts();
  }

  /**
   * Brings VFIO's interrupt set-up in line with the guest's: MSI-X on its vectors' irqfd routes
   * while the guest has MSI-X enabled, else INTx on a resampling irqfd at the GSI the pin is
   * steered to. INTx goes off before MSI-X comes on and the other way round (VFIO allows one type).
   */
  updateInterrupts(): void {
    if (this.closed) return;
    const host = this.host;
    const want: 'msix' | 'msi' | 'none' = this.msix !== null && this.msix.enabled && host.setMsix ? 'msix'
      : this.msi !== null && this.msi.enabled && host.setMsi ? 'msi' : 'none';
    const msiVectors = want === 'msi' && this.msi !== null ? this.msi.enabledVectors : 0;
    const pin = this.interruptPin;
    const gsi = want !== 'none' || !host.setIntx || !this.options.intx ? null : this.bus?.intxGsi?.(this, pin) ?? null;
    try {
      if (this.intxIrqfd !== null && this.intxIrqfd.gsi !== gsi) {
        host.setIntx?.(null);
        this.intxIrqfd.release();
        this.intxIrqfd = null;
      }
      if (this.mode !== 'none' && (this.mode !== want || this.msiVectorsOn !== msiVectors)) {
        if (this.mode === 'msix') host.setMsix?.(null);
        else host.setMsi?.(null);
        this.mode = 'none';
        this.msiVectorsOn = 0;
      }
      if (want === 'msix' && this.mode === 'none' && this.msix !== null) {
        const msix = this.msix;
        host.setMsix?.(Array.from({ length: msix.vectors }, (_, v) => msix.vectorEventFd(v)));
        this.mode = 'msix';
      }
      if (want === 'msi' && this.mode === 'none' && this.msi !== null) {
        const msi = this.msi;
        host.setMsi?.(Array.from({ length: msiVectors }, (_, v) => msi.vectorEventFd(v)));
        this.mode = 'msi';
        this.msiVectorsOn = msiVectors;
      }
      if (gsi !== null && this.intxIrqfd === null && this.options.intx) {
        const irqfd = this.options.intx.lineIrqfd(gsi, { resample: true });
        try {
          host.setIntx?.({ trigger: irqfd.eventFd, unmask: irqfd.resampleFd ?? -1 });
        } catch (e) {
          irqfd.release();
          throw e;
        }
        this.intxIrqfd = irqfd;
      }
    } catch (e) {
      this.options.log?.(`${this.name}: interrupts not set up: ${(e as Error).message}`);
    }
  }

  /** The GSI INTx is wired to now, or null. */
  get intxGsi(): number | null {
    return this.intxIrqfd?.gsi ?? null;
  }

  /** What VFIO delivers now: 'msix', 'msi' or 'none' (INTx when intxGsi is set). */
  get hostInterruptMode(): 'msix' | 'msi' | 'none' {
    return this.mode;
  }

  /** Turns the host function's interrupts off and unmaps its BARs (the machine ends). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      if (this.mode === 'msix') this.host.setMsix?.(null);
      if (this.mode === 'msi') this.host.setMsi?.(null);
      if (this.intxIrqfd !== null) this.host.setIntx?.(null);
    } catch (e) {
      this.options.log?.(`${this.name}: interrupts not turned off: ${(e as Error).message}`);
    }
    this.mode = 'none';
    this.intxIrqfd?.release();
    this.intxIrqfd = null;
    for (const list of this.areas) {
      for (const a of list ?? []) {
        if (a.slot >= 0) {
          try { this.options.slots?.remove(a.slot); } catch { /* the VM is gone already */ }
        }
        a.slot = -1;
        a.unmap();
      }
    }
  }

  override readConfig(offset: number, size: number): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) {
      const at = offset + i;
      v = v * 256 + (this.access[at] === PASSTHROUGH ? this.host.readConfig(at, 1) : super.readConfig(at, 1));
    }
    return v;
  }

  override writeConfig(offset: number, size: number, value: number): ConfigWriteResult | null {
    for (let i = 0; i < size; i++) {
      const at = offset + i;
      if (this.access[at] === PASSTHROUGH) this.host.writeConfig(at, 1, Math.floor(value / 2 ** (8 * i)) & 0xff);
    }
    const changes = super.writeConfig(offset, size, value);
    if (offset < PCI_CFG.COMMAND + 2 && offset + size > PCI_CFG.COMMAND) this.syncHostCommand();
    const touches = (start: number, end: number) => offset < end && offset + size > start;
    if ((this.msix !== null && touches(this.msix.offset + 2, this.msix.offset + 4)) || (this.msi !== null && touches(this.msi.offset + 2, this.msi.offset + 4))) {
      this.updateInterrupts();
    }
    return changes;
  }
}
