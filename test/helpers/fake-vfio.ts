// Fakes for the vfio-pci model's tests: host functions (an e1000e-like one with MSI-X, an
// 82574-like one with MSI only), KVM memory slots, and a PCI platform with IRQ routing over
// the fake KVM.
import { MmioBus, PioBus } from '../../main/vmm/devices/bus';
import { buildPciPlatform } from '../../main/vmm/devices/pci';
import { type BarSlots, VfioPciDevice, type VfioPciHost } from '../../main/vmm/devices/vfio/vfio-pci';
import { IrqRouting } from '../../main/vmm/machine/irq-routing';
import { pcIrqRoutes } from '../../main/vmm/platform/mptable';
import { FakeEventFds, FakeKvm } from './fake-irq';

/** An e1000e-like function: BAR0 mem32 128 KiB (mmap'able), BAR2 I/O 32 bytes, BAR3 mem32 16 KiB with the MSI-X table (5 vectors) at 0 and PBA at 0x2000; INTA. */
export class FakeHost implements VfioPciHost {
  readonly config = Buffer.alloc(256);
  readonly calls: string[] = [];
  readonly mapped: string[] = [];
  intx: { trigger: number; unmask: number } | null = null;
  msix: number[] | null = null;
  sizes = [0x20000, 0, 0x20, 0x4000, 0, 0, 0];
  constructor() {
    const c = this.config;
    c.writeUInt16LE(0x8086, 0); c.writeUInt16LE(0x10d3, 2); c.writeUInt16LE(0x0010, 6);
    c.writeUInt32LE(0x02000000, 8);
    c.writeUInt32LE(0xfebc0000, 0x10); c.writeUInt32LE(0xc081, 0x18); c.writeUInt32LE(0xfebe0000, 0x1c);
    c[0x34] = 0xa0; c[0x3d] = 1;
    c[0xa0] = 0x11; c[0xa1] = 0x00; c.writeUInt16LE(4, 0xa2); c.writeUInt32LE(0x3, 0xa4); c.writeUInt32LE(0x2003, 0xa8);
  }
  readConfig(o: number, s: 1 | 2 | 4): number { return s === 1 ? this.config[o] : s === 2 ? this.config.readUInt16LE(o) : this.config.readUInt32LE(o); }
  writeConfig(o: number, s: 1 | 2 | 4, v: number): void {
    if (s === 1) this.config[o] = v; else if (s === 2) this.config.writeUInt16LE(v, o); else this.config.writeUInt32LE(v >>> 0, o);
  }
  regionSize(i: number): number { return this.sizes[i] ?? 0; }
  readRegion(): number { return 0; }
  writeRegion(): void {}
  setIntx(fds: { trigger: number; unmask: number } | null): void {
    if (fds !== null && this.msix !== null) throw new Error('VFIO: EINVAL (MSI-X is on)');
    this.calls.push(fds === null ? 'intx off' : `intx ${fds.trigger}/${fds.unmask}`);
    this.intx = fds;
  }
  msi: number[] | null = null;
  setMsi(fds: number[] | null): void {
    if (fds !== null && (this.intx !== null || this.msix !== null)) throw new Error('VFIO: EINVAL (another type is on)');
    this.calls.push(fds === null ? 'msi off' : `msi ${fds.join(',')}`);
    this.msi = fds;
  }
  setMsix(fds: number[] | null): void {
    if (fds !== null && this.intx !== null) throw new Error('VFIO: EINVAL (INTx is on)');
    this.calls.push(fds === null ? 'msix off' : `msix ${fds.join(',')}`);
    this.msix = fds;
  }
  mmapAreas(i: number): { offset: number; size: number }[] {
    return i === 0 || i === 3 ? [{ offset: 0, size: this.sizes[i] }] : [];
  }
  mapRegion(i: number, offset: number, size: number): { address: bigint; unmap(): void } {
    const tag = `${i}+${offset.toString(16)}/${size.toString(16)}`;
    this.mapped.push(tag);
    return { address: BigInt(0x7f0000000000 + i * 0x100000 + offset), unmap: () => { this.mapped.splice(this.mapped.indexOf(tag), 1); } };
  }
}

/** An 82574-like function without MSI-X: a 64-bit MSI capability (4 vectors) at 0xd0, PM at 0xc8 after it. */
export class FakeMsiHost extends FakeHost {
  constructor(msiLength = 0x18) {
    super();
    const c = this.config;
    c[0x34] = 0xd0;
    c.fill(0, 0xa0, 0xac);
    c[0xd0] = 0x05; c[0xd1] = msiLength === 0x18 ? 0 : 0xd0 + msiLength; c.writeUInt16LE(0x0084, 0xd2); // 64-bit, MMC 2 (4 vectors)
    if (msiLength !== 0x18) { c[0xd0 + msiLength] = 0x01; c[0xd1 + msiLength] = 0; }
  }
}

export class FakeSlots implements BarSlots {
  readonly live = new Map<number, { base: number; size: number; host: bigint; name: string }>();
  private next = 10;
  add(base: number, size: number, host: bigint, opts: { name: string }): number {
    for (const s of this.live.values()) if (base < s.base + s.size && s.base < base + size) throw new Error('overlap');
    const n = this.next++;
    this.live.set(n, { base, size, host, name: opts.name });
    return n;
  }
  remove(slot: number): void {
    if (!this.live.delete(slot)) throw new Error(`slot ${slot} is not in use`);
  }
  get ranges(): string[] {
    return [...this.live.values()].map((s) => `${s.base.toString(16)}+${s.size.toString(16)}`).sort();
  }
}

export function setupVfio(slot = 24, host: FakeHost = new FakeHost()) {
  const fds = new FakeEventFds();
  const kvm = new FakeKvm(fds);
  const routing = new IrqRouting(kvm, { lineRoutes: pcIrqRoutes(), eventFds: fds });
  routing.commit();
  const logs: string[] = [];
  const ctx = {
    pio: new PioBus(), mmio: new MmioBus(), setIrq: () => {}, signalMsi: () => {}, requestReset: () => {}, requestPowerOff: () => {},
    log: (t: string) => { logs.push(t); },
  };
  const platform = buildPciPlatform(ctx);
  const slots = new FakeSlots();
  const device = new VfioPciDevice('e1000e', host, { msix: { router: routing }, intx: routing, slots, log: (t) => logs.push(t) });
  platform.bus.attach(device, slot);
  return { fds, kvm, routing, platform, host, slots, device, logs };
}

