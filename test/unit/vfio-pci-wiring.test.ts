// The vfio-pci model's wiring against a fake host function on the real PCI platform (PIIX3
// PIRQ steering) and the real IRQ routing over a fake KVM: INTx on a resampling irqfd at the
// steered GSI (following the guest's PIRQ programming), MSI-X vectors' irqfd eventfds handed
// to VFIO (INTx off first), BAR parts as KVM slots (MSI-X pages left trapped) that follow the
// BAR, close(); barMmapPlan's decisions; and a fuzz of guest config writes with all of it on.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MmioBus, PioBus } from '../../main/vmm/devices/bus';
import { buildPciPlatform, PCI_COMMAND } from '../../main/vmm/devices/pci';
import { barMmapPlan, type BarSlots, VfioPciDevice, type VfioPciHost } from '../../main/vmm/devices/vfio/vfio-pci';
import { IrqRouting } from '../../main/vmm/machine/irq-routing';
import { pcIrqRoutes } from '../../main/vmm/platform/mptable';
import { FakeEventFds, FakeKvm } from '../helpers/fake-irq';

/** An e1000e-like function: BAR0 mem32 128 KiB (mmap'able), BAR2 I/O 32 bytes, BAR3 mem32 16 KiB with the MSI-X table (5 vectors) at 0 and PBA at 0x2000; INTA. */
class FakeHost implements VfioPciHost {
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
class FakeMsiHost extends FakeHost {
  constructor(msiLength = 0x18) {
    super();
    const c = this.config;
    c[0x34] = 0xd0;
    c.fill(0, 0xa0, 0xac);
    c[0xd0] = 0x05; c[0xd1] = msiLength === 0x18 ? 0 : 0xd0 + msiLength; c.writeUInt16LE(0x0084, 0xd2); // 64-bit, MMC 2 (4 vectors)
    if (msiLength !== 0x18) { c[0xd0 + msiLength] = 0x01; c[0xd1 + msiLength] = 0; }
  }
}

class FakeSlots implements BarSlots {
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

function setup(slot = 24, host: FakeHost = new FakeHost()) {
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

test('vfio-pci INTx: off until the PIRQ is steered, then a resampling irqfd at that GSI whose eventfds VFIO gets; follows re-steering', () => {
  const { kvm, platform, host, device } = setup(24);
  assert.equal(host.intx, null, 'PIRQs start unrouted');
  // Slot 24 INTA is PIRQ (0 + 24 - 1) & 3 = D.
  platform.isaBridge.routePirqs([10, 10, 11, 11]);
  assert.equal(device.intxGsi, 11);
  const wired = host.intx as unknown as { trigger: number; unmask: number } | null;
  assert.ok(wired);
  const bound = kvm.irqfds.get(wired.trigger);
  assert.deepEqual(bound, { gsi: 11, resampleFd: wired.unmask }, 'VFIO\'s trigger is KVM\'s irqfd, VFIO\'s unmask is its resample eventfd');
  const first = host.intx as unknown as { trigger: number; unmask: number };
  platform.isaBridge.writeConfig(0x63, 1, 5);
  assert.equal(device.intxGsi, 5);
  const now = host.intx as unknown as { trigger: number; unmask: number } | null;
  assert.ok(now);
  assert.deepEqual(host.calls, [`intx ${first.trigger}/${first.unmask}`, 'intx off', `intx ${now.trigger}/${now.unmask}`]);
  assert.equal(kvm.irqfds.has(first.trigger), false, 'the old irqfd is released');
  assert.equal(kvm.irqfds.get(now.trigger)?.gsi, 5);
  platform.isaBridge.writeConfig(0x63, 1, 0x80);
  assert.equal(host.intx, null, 'routing disabled: INTx off');
  assert.equal(device.intxGsi, null);
});

test('vfio-pci MSI-X: enabling hands VFIO one irqfd eventfd per vector (INTx off first), a vector written by VFIO is the guest\'s MSI; disabling goes back to INTx', () => {
  const { kvm, platform, host, device } = setup(24);
  platform.isaBridge.routePirqs([10, 10, 11, 11]);
  const msix = device.msix!;
  assert.ok(msix);
  assert.equal(msix.vectors, 5);
  // The guest places BAR3 and writes vector 2's entry through the trapped table page.
  device.writeConfig(0x1c, 4, 0xe0000000);
  device.writeConfig(4, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
  const bar3 = device.barSpec(3)!.mmio!;
  bar3.write(2 * 16, 4, 0xfee01000); bar3.write(2 * 16 + 8, 4, 0x4062); bar3.write(2 * 16 + 12, 4, 0);
  device.writeConfig(0xa2, 2, 0x8000);
  assert.equal(host.intx, null);
  assert.ok(host.msix);
  assert.equal(host.msix.length, 5);
  assert.deepEqual(host.calls.slice(-2), ['intx off', `msix ${host.msix.join(',')}`]);
  assert.equal(device.hostInterruptMode, 'msix');
  const before = kvm.injected.length;
  kvm.fds.write(host.msix[2]); // what VFIO does when the function sends vector 2
  assert.deepEqual(kvm.injected.slice(before), [{ gsi: kvm.irqfds.get(host.msix[2])!.gsi, msi: { addressLo: 0xfee01000, addressHi: 0, data: 0x4062 } }]);
  // A masked vector's message waits in the PBA.
  kvm.fds.write(host.msix[0]);
  assert.equal(kvm.injected.length, before + 1, 'vector 0 is masked: nothing injected');
  assert.equal(bar3.read(0x2000, 4) & 1, 1, 'vector 0 pending');
  device.writeConfig(0xa2, 2, 0);
  assert.deepEqual(host.calls.slice(-2), ['msix off', `intx ${host.intx!.trigger}/${host.intx!.unmask}`]);
  assert.equal(device.hostInterruptMode, 'none');
});

test('vfio-pci MSI (no MSI-X): an emulated capability where the host\'s was; enabling hands VFIO the enabled vectors\' eventfds (INTx off first), more vectors re-enable, off goes back to INTx', () => {
  const { kvm, platform, host, device } = setup(24, new FakeMsiHost());
  platform.isaBridge.routePirqs([10, 10, 11, 11]);
  assert.equal(device.msix, null);
  assert.ok(device.msi);
  assert.equal(device.readConfig(0x34, 1), 0xd0);
  assert.equal(device.readConfig(0xd0, 1), 0x05);
  assert.equal(device.msi.vectors, 4);
  assert.ok(host.intx);
  device.writeConfig(4, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
  device.writeConfig(0xd4, 4, 0xfee02000); device.writeConfig(0xd8, 4, 0); device.writeConfig(0xdc, 2, 0x4050);
  device.writeConfig(0xd2, 2, 0x0011); // enable, MME 1: two vectors
  assert.equal(device.hostInterruptMode, 'msi');
  const two = host.msi as unknown as number[];
  assert.equal(two.length, 2);
  assert.deepEqual(host.calls.slice(-2), ['intx off', `msi ${two.join(',')}`]);
  const before = kvm.injected.length;
  kvm.fds.write(two[1]);
  assert.deepEqual(kvm.injected.slice(before).map((i) => i.msi), [{ addressLo: 0xfee02000, addressHi: 0, data: 0x4051 }], 'vector 1 sends data | 1');
  device.writeConfig(0xd2, 2, 0x0021); // MME 2: four vectors
  assert.equal((host.msi as unknown as number[]).length, 4);
  assert.deepEqual(host.calls.slice(-2), ['msi off', `msi ${(host.msi as unknown as number[]).join(',')}`]);
  device.writeConfig(0xd2, 2, 0);
  assert.equal(host.msi, null);
  assert.ok(host.intx, 'back on INTx');
  assert.equal(device.hostInterruptMode, 'none');
});

test('vfio-pci MSI: a host capability too short for ours is left out (INTx only)', () => {
  const { device } = setup(24, new FakeMsiHost(0x0c));
  assert.equal(device.msi, null);
  assert.equal(device.readConfig(0x34, 1), 0xdc, 'the chain starts at PM');
});

test('vfio-pci BAR slots: mmap\'able parts become KVM slots while the BAR decodes, the MSI-X pages stay trapped, and follow the guest\'s moves', () => {
  const { host, slots, device } = setup(24);
  assert.deepEqual(host.mapped.sort(), ['0+0/20000', '3+1000/1000', '3+3000/1000'], 'BAR3\'s table page (0) and PBA page (0x2000) are not mapped');
  assert.deepEqual(slots.ranges, [], 'nothing decodes yet');
  device.writeConfig(0x10, 4, 0xe0000000);
  device.writeConfig(0x1c, 4, 0xe0100000);
  device.writeConfig(4, 2, PCI_COMMAND.MEMORY);
  assert.deepEqual(slots.ranges, ['e0000000+20000', 'e0101000+1000', 'e0103000+1000']);
  assert.deepEqual(device.slotMappings.map(([bar, off, size, at]) => [bar, off, size, at]), [[0, 0, 0x20000, 0xe0000000], [3, 0x1000, 0x1000, 0xe0101000], [3, 0x3000, 0x1000, 0xe0103000]]);
  device.writeConfig(0x10, 4, 0xd0000000);
  assert.deepEqual(slots.ranges, ['d0000000+20000', 'e0101000+1000', 'e0103000+1000']);
  device.writeConfig(0x10, 4, 0xffffffff); // sizing with decode on: the BAR decodes at its mask, as hardware does
  assert.equal(device.readConfig(0x10, 4), 0xfffe0000);
  assert.deepEqual(slots.ranges, ['e0101000+1000', 'e0103000+1000', 'fffe0000+20000']);
  device.writeConfig(4, 2, 0);
  assert.deepEqual(slots.ranges, [], 'memory decode off removes every slot');
  device.writeConfig(0x10, 4, 0xe0000000);
  device.writeConfig(4, 2, PCI_COMMAND.MEMORY);
  device.close();
  assert.deepEqual(slots.ranges, []);
  assert.deepEqual(host.mapped, [], 'close unmaps the BARs');
});

test('vfio-pci close turns the host\'s interrupts off and releases the irqfd', () => {
  const { kvm, platform, host, device } = setup(24);
  platform.isaBridge.routePirqs([10, 10, 11, 11]);
  const trigger = host.intx!.trigger;
  device.close();
  assert.equal(host.intx, null);
  assert.equal(kvm.irqfds.has(trigger), false);
  platform.isaBridge.routePirqs([11, 11, 10, 10]);
  assert.equal(host.intx, null, 'a closed device sets nothing up again');
});

test('barMmapPlan: page-aligned parts of the mmap\'able areas inside the host size, without the pages trapped ranges touch', () => {
  assert.deepEqual(barMmapPlan(0x20000, [{ offset: 0, size: 0x20000 }], []), [{ offset: 0, size: 0x20000 }]);
  assert.deepEqual(barMmapPlan(0x4000, [{ offset: 0, size: 0x4000 }], [{ offset: 0x2000, size: 0x50 }, { offset: 0x3000, size: 8 }]),
    [{ offset: 0, size: 0x2000 }]);
  assert.deepEqual(barMmapPlan(0x4000, [{ offset: 0, size: 0x4000 }], [{ offset: 0x1ff8, size: 0x10 }]), [{ offset: 0, size: 0x1000 }, { offset: 0x3000, size: 0x1000 }],
    'a range crossing a page boundary traps both pages');
  assert.deepEqual(barMmapPlan(0x800, [{ offset: 0, size: 0x800 }], []), [], 'less than a page: trapped');
  assert.deepEqual(barMmapPlan(0x10000, [{ offset: 0x800, size: 0x2000 }, { offset: 0x8000, size: 0x100000 }], []),
    [{ offset: 0x1000, size: 0x1000 }, { offset: 0x8000, size: 0x8000 }], 'areas are cut to whole pages and to the host size');
  assert.deepEqual(barMmapPlan(0x10000, [{ offset: -4096, size: 0x2000 }, { offset: 0, size: 0 }, { offset: NaN, size: 4096 }], []), [], 'bad areas are ignored');
  assert.deepEqual(barMmapPlan(0x10000, [{ offset: 0, size: 0x4000 }, { offset: 0x2000, size: 0x4000 }], []), [{ offset: 0, size: 0x4000 }], 'overlapping areas: the first wins');
});

test('vfio-pci wiring fuzz: random guest config and PIRQ writes never throw, never leave INTx and MSI-X on together, never overlap slots', () => {
  const scale = Number(process.env.PORTHOLE_FUZZ_SCALE ?? 1);
  let seed = 777;
  const rnd = (n: number) => { seed = (seed * 1103515245 + 12345) >>> 0; return seed % n; };
  for (let round = 0; round < 10 * scale; round++) {
    const { platform, host, slots, device, kvm } = setup(24 + rnd(8), rnd(2) ? new FakeHost() : new FakeMsiHost());
    for (let i = 0; i < 400; i++) {
      const pick = rnd(10);
      if (pick === 0) {
        platform.isaBridge.writeConfig(0x60 + rnd(4), 1, [3, 5, 10, 11, 0x80, rnd(256)][rnd(6)]);
        continue;
      }
      const size = [1, 2, 4][rnd(3)];
      const offset = pick < 4 ? [4, 0x10, 0x1c, 0xa2, 0x18, 0x30, 0xd2, 0xd4][rnd(8)] : rnd(256 / size) * size;
      const value = rnd(3) === 0 ? 0xffffffff : (rnd(0x10000) * 0x10000 + rnd(0x10000)) >>> 0;
      device.writeConfig(offset - (offset % size), size, size === 4 ? value : value & (size === 2 ? 0xffff : 0xff));
      assert.ok([host.intx, host.msix, host.msi].filter((x) => x !== null).length <= 1, 'two interrupt types on at once');
      const live = [...slots.live.values()].sort((a, b) => a.base - b.base);
      live.forEach((s, j) => { if (j > 0) assert.ok(live[j - 1].base + live[j - 1].size <= s.base, 'slots overlap'); });
      for (const [bar, off, sz, at] of device.slotMappings) {
        assert.equal(device.barAddress(bar)! + off, at);
        assert.ok(off + sz <= host.sizes[bar]);
      }
      if (host.intx !== null) assert.equal(kvm.irqfds.get(host.intx.trigger)?.gsi, device.intxGsi);
    }
    device.close();
    assert.equal(slots.live.size, 0);
    assert.deepEqual(host.mapped, []);
  }
});
