// The start of the vfio-pci device model: a host PCI function's configuration space as the
// guest sees it. Identity and capability bodies are passed through to the host device; the
// BARs, ROM BAR, command register's decode bits, interrupt line, the capability chain's links
// and the MSI-X capability are emulated (the guest places BARs in its own address space and
// programs MSI-X messages for its own interrupt controller). The MSI capability is left out of
// the chain: the guest uses MSI-X. BAR accesses are trapped and forwarded to the host region,
// except the MSI-X table and PBA, which the emulated capability serves.
// Not yet here: BARs mapped as KVM memory slots, MSI-X vectors wired to VFIO eventfds/irqfd,
// INTx, DMA mapping of guest RAM, extended config space (0x100+).
import { allOnes, type IoDevice } from '../io-device';
import { MSIX_CAP_LENGTH, MsixCapability, type MsixOptions } from '../pci/msix';
import { ConfigWriteResult, PCI_BAR_COUNT, PCI_CAP_ID, PCI_CFG, PCI_COMMAND, PCI_ROM_BAR, PciDevice, type BarKind } from '../pci/pci-device';

/** What the model needs of the host function (native/vfio.ts's VfioDevice in production, a fake in tests). */
export interface VfioPciHost {
  /** Host configuration space, little-endian, 1, 2 or 4 bytes inside one dword. */
  readConfig(offset: number, size: 1 | 2 | 4): number;
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void;
  /** The size of region `index` (BARs 0..5, ROM 6); 0 where the function has none. */
  regionSize(index: number): number;
  readRegion(index: number, offset: number, size: 1 | 2 | 4): number;
  writeRegion(index: number, offset: number, size: 1 | 2 | 4, value: number): void;
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
}

export class VfioPciDevice extends PciDevice {
  readonly msix: MsixCapability | null;
  /** Per config byte: PASSTHROUGH where reads and writes go to the host. */
  private readonly access = new Uint8Array(256);
  /** The host capabilities the guest sees, in chain order: [id, offset]. */
  readonly capabilities: [number, number][] = [];

  constructor(name: string, readonly host: VfioPciHost, options: VfioPciOptions = {}) {
    super(name, {
      vendorId: host.readConfig(PCI_CFG.VENDOR_ID, 2), deviceId: host.readConfig(PCI_CFG.DEVICE_ID, 2),
      classCode: host.readConfig(PCI_CFG.REVISION, 4) >>> 8, revision: host.readConfig(PCI_CFG.REVISION, 1),
      subsystemVendorId: host.readConfig(PCI_CFG.SUBSYSTEM_VENDOR_ID, 2), subsystemId: host.readConfig(PCI_CFG.SUBSYSTEM_ID, 2),
      interruptPin: Math.min(host.readConfig(PCI_CFG.INTERRUPT_PIN, 1), 4),
    });
    this.defineHostBars();
    this.msix = this.copyCapabilities(options);
    // The host function decodes its BARs for our traps whatever the guest's command register says.
    this.syncHostCommand();
  }

  private defineHostBars(): void {
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
    const rom = this.host.regionSize(PCI_ROM_BAR);
    if (rom > 0) {
      const trap = new BarTrap(`${this.name}/rom`, this, PCI_ROM_BAR, rom);
      this.defineBar(PCI_ROM_BAR, { kind: 'mem32', size: Math.max(nextPowerOfTwo(rom), 2048), mmio: { name: trap.name, read: (o, s) => trap.read(o, s), write: () => {} } });
    }
  }

  /** Rebuilds the host's capability chain (without MSI) with the same offsets; returns the emulated MSI-X capability. */
  private copyCapabilities(options: VfioPciOptions): MsixCapability | null {
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
      if (id === PCI_CAP_ID.MSI) continue;
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
    return changes;
  }
}
