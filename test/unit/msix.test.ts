import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type IoDevice, MmioBus, PioBus } from '../../main/vmm/devices/bus';
import {
  MSIX_CONTROL, MsiCapability, MsixCapability, MsixMmio, PCI_CAP_ID, PCI_CFG, PCI_COMMAND, PciBus, PciDevice,
} from '../../main/vmm/devices/pci';
import type { MsiRouter } from '../../main/vmm/devices/interrupts';
import { IrqRouting } from '../../main/vmm/machine/irq-routing';
import { pcIrqRoutes } from '../../main/vmm/platform/mptable';
import { StatsRegistry } from '../../main/vmm/shared/stats';
import { FakeEventFds, FakeKvm } from '../helpers/fake-irq';

const BAR_ADDRESS = 0xfe000000;
const TABLE = 0x2000;
const PBA = 0x3000;
const LAPIC_MSG = 0xfee00000;

/** An 8-byte MMIO read as [low, high]. */
function read64(mmio: MmioBus, addr: number): number[] {
  const halves = new Uint32Array(2);
  mmio.read64(addr, halves);
  return [...halves];
}

/**
 * A function with the MSI-X table and PBA in BAR 0 (as QEMU's xHCI lays it out), after
 * its own registers: its MMIO handler forwards table and PBA accesses to the capability.
 */
class MsixDevice extends PciDevice {
  readonly msix: MsixCapability;
  /** The device's own register at BAR 0 offset 0. */
  scratch = 0;
  constructor(vectors: number, router: MsiRouter | null, statistics: StatsRegistry | null) {
    super('msix-dev', { vendorId: 0x1b36, deviceId: 0x000d, classCode: 0x0c0330 });
    const registers: IoDevice = {
      name: 'msix-dev',
      read: (offset, size) => this.msix.readBar(0, offset, size) ?? (offset === 0 ? this.scratch : 0),
      write: (offset, size, value) => {
        if (!this.msix.writeBar(0, offset, size, value) && offset === 0) this.scratch = value;
      },
      read64: (offset, halves) => {
        halves[0] = offset % 8 === 0 ? this.msix.readBar(0, offset, 4) ?? 0 : 0;
        halves[1] = offset % 8 === 0 ? this.msix.readBar(0, offset + 4, 4) ?? 0 : 0;
      },
      write64: (offset, low, high) => {
        if (offset % 8 !== 0) return;
        this.msix.writeBar(0, offset, 4, low);
        this.msix.writeBar(0, offset + 4, 4, high);
      },
    };
    this.defineBar(0, { kind: 'mem64', size: 0x4000, mmio: registers });
    this.msix = new MsixCapability(this, { vectors, tableBar: 0, tableOffset: TABLE, pbaBar: 0, pbaOffset: PBA }, { router, statistics });
  }
}

function setup(vectors = 8, withRouter = true) {
  const fds = new FakeEventFds();
  const kvm = new FakeKvm(fds);
  const routing = new IrqRouting(kvm, { lineRoutes: pcIrqRoutes(), eventFds: fds });
  routing.commit();
  const stats = new StatsRegistry();
  const busMsis: [number, number, number][] = [];
  const mmio = new MmioBus();
  const bus = new PciBus({
    pio: new PioBus(), mmio, log: () => {}, signalMsi: (lo, hi, data) => { busMsis.push([lo, hi, data]); },
  });
  const dev = new MsixDevice(vectors, withRouter ? routing : null, stats);
  bus.attach(dev, 4);
  const msix = dev.msix;
  const cap = msix.offset;
  // Through the bus, which maps the BAR once each write returned (a ConfigWriteResult).
  const cfg = (register: number, size: number, value: number) => bus.writeConfig(0, 4 << 3, register, size, value);
  cfg(PCI_CFG.BAR0, 4, BAR_ADDRESS);
  cfg(PCI_CFG.BAR0 + 4, 4, 0);
  const command = (master: boolean) => cfg(PCI_CFG.COMMAND, 2, PCI_COMMAND.MEMORY | (master ? PCI_COMMAND.MASTER : 0));
  command(true);
  const control = (bits: number) => cfg(cap + 2, 2, bits);
  const program = (v: number, data: number, addressLo = LAPIC_MSG) => {
    msix.writeTable(v * 16, 4, addressLo);
    msix.writeTable(v * 16 + 4, 4, 0);
    msix.writeTable(v * 16 + 8, 4, data);
  };
  const mask = (v: number, masked: boolean) => msix.writeTable(v * 16 + 12, 4, masked ? 1 : 0);
  const pbaBit = (v: number) => (msix.readPba((v >>> 5) * 4, 4) >>> (v & 31)) & 1;
  const counter = (v: number) => stats.counts[stats.counter('msix-dev', `msix-${v}`)];
  return { fds, kvm, routing, stats, busMsis, mmio, dev, msix, cap, command, control, program, mask, pbaBit, counter };
}

const msg = (data: number) => ({ addressLo: LAPIC_MSG, addressHi: 0, data });

test('the capability: id, table size, BIR/offset dwords; only Enable and Function Mask are writable', () => {
  const { dev, cap } = setup(70);
  assert.equal(dev.findCapability(PCI_CAP_ID.MSIX), cap);
  assert.equal(dev.readConfig(cap, 1), 0x11);
  assert.equal(dev.readConfig(cap + 2, 2), 69, 'table size is N-1');
  assert.equal(dev.readConfig(cap + 4, 4), TABLE | 0);
  assert.equal(dev.readConfig(cap + 8, 4), PBA | 0);
  dev.writeConfig(cap + 2, 2, 0xffff);
  assert.equal(dev.readConfig(cap + 2, 2), 0xc000 | 69);
  dev.writeConfig(cap + 4, 4, 0xffffffff);
  dev.writeConfig(cap + 8, 4, 0);
  assert.equal(dev.readConfig(cap + 4, 4), TABLE);
  assert.equal(dev.readConfig(cap + 8, 4), PBA);
});

test('the table resets with every vector masked and zero messages; the PBA reads zero', () => {
  const { msix } = setup(70);
  assert.equal(msix.tableSize, 70 * 16);
  assert.equal(msix.pbaSize, 16, 'two 64-bit words for 70 vectors');
  for (let v = 0; v < 70; v++) {
    assert.equal(msix.readTable(v * 16 + 12, 4), 1);
    assert.equal(msix.readTable(v * 16, 4), 0);
    assert.equal(msix.vectorState(v), 'off');
  }
  for (let o = 0; o < 16; o += 4) assert.equal(msix.readPba(o, 4), 0);
});

test('table access widths: dwords read and write; aligned bytes and words read; narrower writes are ignored', () => {
  const { msix } = setup();
  msix.writeTable(16, 4, 0xfee01234);
  assert.equal(msix.readTable(16, 4), 0xfee01234, 'address bits 1:0 are kept as written when zero');
  msix.writeTable(16, 4, 0xfee00003);
  assert.equal(msix.readTable(16, 4), 0xfee00000, 'address bits 1:0 read as zero');
  msix.writeTable(24, 4, 0x12345678);
  assert.equal(msix.readTable(24, 1), 0x78);
  assert.equal(msix.readTable(25, 1), 0x56);
  assert.equal(msix.readTable(26, 2), 0x1234);
  assert.equal(msix.readTable(25, 2), 0, 'an unaligned word reads 0');
  assert.equal(msix.readTable(26, 4), 0, 'an unaligned dword reads 0');
  assert.equal(msix.readTable(24, 8), 0, 'the core takes 1, 2 or 4 bytes');
  msix.writeTable(24, 1, 0xff);
  msix.writeTable(24, 2, 0xffff);
  msix.writeTable(26, 4, 0xffffffff);
  assert.equal(msix.readTable(24, 4), 0x12345678, 'narrow and unaligned writes change nothing');
  msix.writeTable(28, 4, 0xfffffffe);
  assert.equal(msix.readTable(28, 4), 0, 'reserved Vector Control bits read 0');
  msix.writeTable(28, 4, 0xffffffff);
  assert.equal(msix.readTable(28, 4), 1);
});

test('bad table and PBA offsets: outside, negative, fractional, straddling the end', () => {
  const { msix } = setup();
  const end = msix.tableSize;
  assert.equal(msix.readTable(end, 4), 0);
  assert.equal(msix.readTable(end - 2, 4), 0);
  assert.equal(msix.readTable(-4, 4), 0);
  assert.equal(msix.readTable(1.5, 1), 0);
  assert.equal(msix.readTable(Number.NaN, 4), 0);
  const before = msix.readTable(end - 4, 4);
  msix.writeTable(end, 4, 0);
  msix.writeTable(-4, 4, 0);
  msix.writeTable(end - 2, 4, 0);
  assert.equal(msix.readTable(end - 4, 4), before);
  assert.equal(msix.readPba(msix.pbaSize, 4), 0);
  assert.equal(msix.readPba(-4, 4), 0);
  // In the BAR: the device's own registers and the gap between table and PBA are not MSI-X's.
  assert.equal(msix.readBar(0, 0, 4), null);
  assert.equal(msix.readBar(0, TABLE + end, 4), null);
  assert.equal(msix.writeBar(0, PBA + msix.pbaSize, 4, 1), false);
  assert.equal(msix.readBar(1, TABLE, 4), null, 'another BAR');
  assert.equal(msix.readBar(0, TABLE + 12, 4), 1);
  assert.equal(msix.writeBar(0, PBA, 4, 0xffffffff), true);
});

test('through the mapped BAR: qword accesses split into dwords, the PBA ignores writes', () => {
  const { mmio, msix, control, mask } = setup();
  mmio.write64(BAR_ADDRESS + TABLE + 32, 0xfee02000, 0);
  mmio.write64(BAR_ADDRESS + TABLE + 40, 0x00004055, 1);
  assert.deepEqual(msix.message(2), { addressLo: 0xfee02000, addressHi: 0, data: 0x4055 });
  assert.equal(msix.vectorMasked(2), true);
  assert.deepEqual(read64(mmio, BAR_ADDRESS + TABLE + 40), [0x4055, 1]);
  assert.equal(mmio.read(BAR_ADDRESS + TABLE + 44, 4), 1);
  assert.deepEqual(read64(mmio, BAR_ADDRESS + TABLE + 36), [0, 0], 'an unaligned qword reads 0');
  assert.equal(mmio.read(BAR_ADDRESS + 0x100, 4), 0, 'outside the table and PBA');
  control(MSIX_CONTROL.ENABLE);
  assert.equal(msix.notify(2), false);
  assert.deepEqual(read64(mmio, BAR_ADDRESS + PBA), [4, 0], 'vector 2 pending');
  mmio.write64(BAR_ADDRESS + PBA, 0, 0);
  mmio.write(BAR_ADDRESS + PBA, 4, 0xffffffff);
  assert.equal(mmio.read(BAR_ADDRESS + PBA, 4), 4, 'guest writes to the read-only PBA are ignored');
  mask(2, false);
  assert.deepEqual(read64(mmio, BAR_ADDRESS + PBA), [0, 0]);
});

test('a live vector sends its message through its irqfd route, counted per vector', () => {
  const { kvm, msix, control, program, mask, counter } = setup();
  program(1, 0x41);
  mask(1, false);
  assert.equal(msix.notify(1), false, 'MSI-X not enabled: dropped');
  assert.equal(msix.isPending(1), false, 'a disabled function keeps nothing pending');
  control(MSIX_CONTROL.ENABLE);
  assert.equal(msix.vectorState(1), 'live');
  assert.equal(msix.notify(1), true);
  assert.equal(msix.notify(1), true);
  assert.deepEqual(kvm.messages, [msg(0x41), msg(0x41)]);
  assert.equal(counter(1), 2);
  assert.equal(counter(0), 0);
  assert.equal(msix.notify(8), false, 'no such vector');
  assert.equal(msix.notify(-1), false);
  assert.equal(msix.notify(0.5), false);
  assert.throws(() => msix.vectorState(8), RangeError);
});

test('per-vector mask: a message becomes pending, and unmasking sends it once and clears the bit', () => {
  const { kvm, msix, control, program, mask, pbaBit, counter } = setup();
  control(MSIX_CONTROL.ENABLE);
  program(3, 0x53);
  program(4, 0x54);
  mask(4, false);
  assert.equal(msix.vectorState(3), 'masked');
  assert.equal(msix.notify(3), false);
  assert.equal(msix.notify(3), false);
  assert.equal(pbaBit(3), 1);
  assert.equal(pbaBit(4), 0);
  assert.deepEqual(kvm.messages, []);
  assert.equal(counter(3), 0, 'a pending message is not counted until sent');
  mask(3, false);
  assert.deepEqual(kvm.messages, [msg(0x53)], 'two pending messages are one pending bit');
  assert.equal(pbaBit(3), 0);
  assert.equal(counter(3), 1);
  // Masking again and unmasking with nothing pending sends nothing.
  mask(3, true);
  mask(3, false);
  assert.deepEqual(kvm.messages, [msg(0x53)]);
  msix.notify(4);
  assert.deepEqual(kvm.messages, [msg(0x53), msg(0x54)]);
});

test('function mask: every vector holds its message pending until the mask clears', () => {
  const { kvm, msix, control, program, mask, pbaBit, routing } = setup();
  for (const v of [0, 5, 6]) { program(v, 0x60 + v); mask(v, false); }
  control(MSIX_CONTROL.ENABLE | MSIX_CONTROL.FUNCTION_MASK);
  assert.equal(msix.functionMasked, true);
  assert.equal(msix.vectorState(5), 'masked');
  msix.notify(0);
  msix.notify(6);
  assert.equal(pbaBit(0), 1);
  assert.equal(pbaBit(6), 1);
  assert.equal(pbaBit(5), 0);
  assert.deepEqual(kvm.messages, []);
  const commits = routing.commits;
  control(MSIX_CONTROL.ENABLE);
  assert.deepEqual(kvm.messages, [msg(0x60), msg(0x66)]);
  assert.equal(pbaBit(0) | pbaBit(6), 0);
  assert.ok(routing.commits - commits <= 1, 'one table commit for the whole function');
  // A vector that is still masked by its own bit stays pending through the function mask.
  mask(5, true);
  msix.notify(5);
  control(MSIX_CONTROL.ENABLE | MSIX_CONTROL.FUNCTION_MASK);
  control(MSIX_CONTROL.ENABLE);
  assert.equal(pbaBit(5), 1);
});

test('bus mastering off: messages are refused, not pending, and eventfd writes meanwhile are dropped', () => {
  const { kvm, fds, msix, control, command, program, mask, pbaBit } = setup();
  program(2, 0x72);
  mask(2, false);
  control(MSIX_CONTROL.ENABLE);
  const fd = msix.vectorEventFd(2);
  const maskedFd = msix.vectorEventFd(3);
  command(false);
  assert.equal(msix.vectorState(2), 'off');
  assert.equal(msix.notify(2), false);
  fds.write(fd); // a backend on another thread
  fds.write(maskedFd);
  assert.equal(pbaBit(2), 0);
  command(true);
  assert.deepEqual(kvm.messages, [], 'nothing sent late');
  assert.equal(msix.vectorState(3), 'masked');
  assert.equal(pbaBit(3), 0, 'a write while off does not become pending');
  fds.write(fd);
  assert.deepEqual(kvm.messages, [msg(0x72)]);
});

test('the vector eventfd: a backend write is sent while live, pending while masked, delivered on unmask', () => {
  const { kvm, fds, msix, control, program, mask, pbaBit } = setup(70);
  program(65, 0x80);
  control(MSIX_CONTROL.ENABLE);
  const fd = msix.vectorEventFd(65);
  assert.equal(msix.vectorEventFd(65), fd, 'one eventfd per vector');
  fds.write(fd);
  fds.write(fd);
  assert.deepEqual(kvm.messages, [], 'masked at reset');
  assert.equal(pbaBit(65), 1, 'the PBA read collects writes waiting in the eventfd');
  assert.equal(msix.readPba(8, 4), 2, 'vector 65 is bit 1 of the second qword');
  mask(65, false);
  assert.deepEqual(kvm.messages, [msg(0x80)]);
  assert.equal(pbaBit(65), 0);
  fds.write(fd);
  assert.deepEqual(kvm.messages, [msg(0x80), msg(0x80)], 'a live vector needs no JavaScript');
  mask(65, true);
  fds.write(fd);
  mask(65, false);
  assert.equal(kvm.messages.length, 3, 'a write while masked is sent on unmask without a PBA read');
  assert.equal(kvm.lost, 0);
});

test('the guest reprograms a vector: a live route follows, a masked one when unmasked', () => {
  const { kvm, msix, control, program, mask } = setup();
  control(MSIX_CONTROL.ENABLE);
  program(0, 0x30);
  mask(0, false);
  msix.notify(0);
  program(0, 0x31, 0xfee01000);
  msix.notify(0);
  mask(0, true);
  program(0, 0x32);
  const commits = kvm.commits;
  program(0, 0x33);
  assert.equal(kvm.commits, commits, 'a masked vector\'s message is not committed');
  mask(0, false);
  msix.notify(0);
  assert.deepEqual(kvm.messages, [msg(0x30), { addressLo: 0xfee01000, addressHi: 0, data: 0x31 }, msg(0x33)]);
});

test('disabling MSI-X unbinds every route; pending bits survive until a vector goes live', () => {
  const { kvm, msix, control, program, mask, pbaBit } = setup();
  control(MSIX_CONTROL.ENABLE);
  program(1, 0x91);
  program(2, 0x92);
  mask(2, false);
  msix.vectorEventFd(2);
  msix.notify(1);
  assert.equal(kvm.irqfds.size, 1);
  control(0);
  assert.equal(kvm.irqfds.size, 0);
  assert.equal(pbaBit(1), 1);
  assert.equal(msix.enabled, false);
  mask(1, false);
  control(MSIX_CONTROL.ENABLE);
  assert.deepEqual(kvm.messages, [msg(0x91)]);
  assert.equal(kvm.irqfds.size, 2);
  msix.clearPending(1);
  assert.throws(() => msix.clearPending(9), RangeError);
});

test('a device may clear a pending bit whose cause went away', () => {
  const { kvm, msix, control, program, mask, pbaBit } = setup();
  control(MSIX_CONTROL.ENABLE);
  program(0, 0x20);
  msix.notify(0);
  assert.equal(pbaBit(0), 1);
  msix.clearPending(0);
  assert.equal(pbaBit(0), 0);
  mask(0, false);
  assert.deepEqual(kvm.messages, []);
});

test('without a router, messages go through the bus (KVM_SIGNAL_MSI)', () => {
  const { busMsis, msix, control, program, mask, counter, kvm } = setup(4, false);
  control(MSIX_CONTROL.ENABLE);
  program(3, 0x4a, 0xfee03000);
  mask(3, false);
  assert.equal(msix.notify(3), true);
  assert.deepEqual(busMsis, [[0xfee03000, 0, 0x4a]]);
  assert.equal(counter(3), 1);
  assert.deepEqual(kvm.messages, []);
  assert.throws(() => msix.vectorEventFd(3), /no irqfd route/);
});

test('when KVM\'s routing table is full, vectors fall back to the bus', () => {
  const fds = new FakeEventFds();
  const kvm = new FakeKvm(fds);
  const routing = new IrqRouting(kvm, { lineRoutes: pcIrqRoutes(), maxRoutes: pcIrqRoutes().length + 1, eventFds: fds });
  routing.commit();
  routing.createMsiRoute(); // another device took the last route
  const busMsis: number[] = [];
  const bus = new PciBus({ pio: new PioBus(), mmio: new MmioBus(), log: () => {}, signalMsi: (_lo, _hi, data) => { busMsis.push(data); } });
  const dev = new MsixDevice(2, routing, null);
  bus.attach(dev, 5);
  dev.writeConfig(PCI_CFG.COMMAND, 2, PCI_COMMAND.MASTER);
  dev.writeConfig(dev.msix.offset + 2, 2, MSIX_CONTROL.ENABLE);
  dev.msix.writeTable(8, 4, 0x77);
  dev.msix.writeTable(12, 4, 0);
  assert.equal(dev.msix.notify(0), true);
  assert.deepEqual(busMsis, [0x77]);
});

test('layout checks: BARs must exist and be memory, offsets aligned, regions inside and apart', () => {
  const make = (layout: Partial<ConstructorParameters<typeof MsixCapability>[1]>, ioBar = false) => {
    const dev = new PciDevice('layout', { vendorId: 1, deviceId: 2, classCode: 0 });
    dev.defineBar(0, { kind: 'mem32', size: 0x1000 });
    if (ioBar) dev.defineBar(1, { kind: 'io', size: 0x20 });
    return new MsixCapability(dev, { vectors: 4, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800, ...layout });
  };
  assert.ok(make({}));
  assert.throws(() => make({ vectors: 0 }), /vector count/);
  assert.throws(() => make({ vectors: 2049 }), /vector count/);
  assert.throws(() => make({ tableBar: 2 }), /not a defined memory BAR/);
  assert.throws(() => make({ tableBar: 1 }, true), /not a defined memory BAR/);
  assert.throws(() => make({ pbaBar: 6 }), /not a defined memory BAR/);
  assert.throws(() => make({ tableOffset: 4 }), /aligned/);
  assert.throws(() => make({ tableOffset: 0xfc8 }), /does not fit/);
  assert.throws(() => make({ pbaOffset: 0x1000 }), /does not fit/);
  assert.throws(() => make({ pbaOffset: 0x38 }), /overlap/);
});

test('MSI with a router: vectors go through irqfd routes that follow the guest and unbind when MSI is off', () => {
  const fds = new FakeEventFds();
  const kvm = new FakeKvm(fds);
  const routing = new IrqRouting(kvm, { lineRoutes: pcIrqRoutes(), eventFds: fds });
  routing.commit();
  const dev = new PciDevice('msi-dev', { vendorId: 1, deviceId: 2, classCode: 0 });
  const msi = new MsiCapability(dev, 4, routing);
  const o = msi.offset;
  dev.writeConfig(o + 4, 4, LAPIC_MSG);
  dev.writeConfig(o + 12, 2, 0x4040);
  dev.writeConfig(o + 2, 2, 0x0021); // enable, 4 vectors
  assert.equal(msi.signal(1), false, 'no bus mastering');
  dev.writeConfig(PCI_CFG.COMMAND, 2, PCI_COMMAND.MASTER);
  assert.equal(msi.signal(1), true);
  assert.equal(msi.signal(4), false);
  const fd = msi.vectorEventFd(3);
  fds.write(fd);
  assert.deepEqual(kvm.messages, [msg(0x4041), msg(0x4043)]);
  dev.writeConfig(o + 12, 2, 0x4050);
  msi.signal(1);
  assert.deepEqual(kvm.messages.at(-1), msg(0x4051), 'the route follows a new data value');
  dev.writeConfig(o + 2, 2, 0x0020); // MSI off
  assert.equal(kvm.irqfds.size, 0);
  fds.write(fd);
  dev.writeConfig(o + 2, 2, 0x0021);
  assert.equal(kvm.messages.length, 3, 'a write while MSI was off is dropped');
  fds.write(fd);
  assert.deepEqual(kvm.messages.at(-1), msg(0x4053));
});

test('MsixMmio: a BAR of its own for the table and PBA (virtio-pci layout)', () => {
  const fds = new FakeEventFds();
  const kvm = new FakeKvm(fds);
  const routing = new IrqRouting(kvm, { lineRoutes: pcIrqRoutes(), eventFds: fds });
  routing.commit();
  class VirtioLike extends PciDevice {
    readonly msix: MsixCapability;
    readonly handler = new MsixMmio('virtio-msix', 2, () => this.msix);
    constructor() {
      super('virtio-like', { vendorId: 0x1af4, deviceId: 0x1041, classCode: 0x020000 });
      this.defineBar(2, { kind: 'mem32', size: 0x1000, mmio: this.handler });
      assert.equal(this.handler.read(0, 4), 0, 'before the capability exists');
      this.msix = new MsixCapability(this, { vectors: 3, tableBar: 2, tableOffset: 0, pbaBar: 2, pbaOffset: 0x800 }, { router: routing });
    }
  }
  const dev = new VirtioLike();
  const mmio = new MmioBus();
  const bus = new PciBus({ pio: new PioBus(), mmio, log: () => {}, signalMsi: () => {} });
  bus.attach(dev, 6);
  bus.writeConfig(0, 6 << 3, PCI_CFG.BAR0 + 8, 4, 0xfebf0000);
  bus.writeConfig(0, 6 << 3, PCI_CFG.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
  mmio.write64(0xfebf0000 + 16, 0xfee00000, 0);
  mmio.write64(0xfebf0000 + 24, 0x61, 0); // data 0x61, unmasked, in one qword
  assert.equal(mmio.read(0xfebf0000 + 28, 4), 0);
  assert.equal(mmio.read(0xfebf0000 + 0x400, 4), 0, 'between table and PBA');
  mmio.write(0xfebf0000 + 0x400, 4, 5);
  dev.writeConfig(dev.msix.offset + 2, 2, MSIX_CONTROL.ENABLE);
  assert.equal(dev.msix.notify(1), true);
  dev.msix.notify(0);
  assert.deepEqual(read64(mmio, 0xfebf0000 + 0x800), [1, 0], 'vector 0 (masked) pending');
  assert.deepEqual(kvm.messages, [msg(0x61)]);
});
