import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MmioBus, PioBus, type IoDevice } from '../../main/vmm/devices/bus';
import {
  buildPciPlatform, MsiCapability, PCI_CFG, PCI_COMMAND, PciBus, PciDevice, PIIX4_PMBA, PIIX4_PMREGMISC, PM1_CNT, PM1_STS,
} from '../../main/vmm/devices/pci';
import { ACPI_GPE0_BASE, ACPI_PM_BASE } from '../../main/vmm/platform/layout';

interface Recorder {
  irqs: [number, boolean][];
  msis: [number, number, number][];
  resets: number;
  powerOffs: number;
  logs: string[];
}

function setup(clockNs?: () => bigint) {
  const rec: Recorder = { irqs: [], msis: [], resets: 0, powerOffs: 0, logs: [] };
  const ctx = {
    pio: new PioBus(),
    mmio: new MmioBus(),
    setIrq: (gsi: number, level: boolean) => { rec.irqs.push([gsi, level]); },
    signalMsi: (lo: number, hi: number, data: number) => { rec.msis.push([lo, hi, data]); },
    requestReset: () => { rec.resets++; },
    requestPowerOff: () => { rec.powerOffs++; },
    log: (text: string) => { rec.logs.push(text); },
  };
  const platform = buildPciPlatform(ctx, { clockNs });
  const cfgAddress = (bus: number, slot: number, fn: number, reg: number) => (0x80000000 | (bus << 16) | (slot << 11) | (fn << 8) | (reg & 0xfc)) >>> 0;
  const cfgRead = (slot: number, fn: number, reg: number, size: number, bus = 0) => {
    ctx.pio.write(0xcf8, 4, cfgAddress(bus, slot, fn, reg));
    return ctx.pio.read(0xcfc + (reg & 3), size);
  };
  const cfgWrite = (slot: number, fn: number, reg: number, size: number, value: number) => {
    ctx.pio.write(0xcf8, 4, cfgAddress(0, slot, fn, reg));
    ctx.pio.write(0xcfc + (reg & 3), size, value);
  };
  return { ctx, rec, platform, cfgRead, cfgWrite };
}

class Probe implements IoDevice {
  constructor(readonly name: string, private readonly value: number) {}
  read(): number { return this.value; }
  write(): void {}
}

/** A device with every BAR kind, a ROM and INTA. */
class TestDevice extends PciDevice {
  readonly io = new Probe('test-io', 0x42);
  readonly mem = new Probe('test-mem', 0x43);
  readonly msi: MsiCapability;
  constructor() {
    super('test-dev', { vendorId: 0x1234, deviceId: 0x5678, classCode: 0xff0000, interruptPin: 1 });
    this.defineBar(0, { kind: 'io', size: 32, io: this.io });
    this.defineBar(1, { kind: 'mem32', size: 0x1000, mmio: this.mem });
    this.defineBar(2, { kind: 'mem64', size: 0x100000, prefetchable: true });
    this.defineBar(6, { kind: 'mem32', size: 0x10000 });
    this.msi = new MsiCapability(this, 4);
  }
}

test('configuration mechanism #1 reads the i440FX and PIIX identities', () => {
  const { cfgRead, ctx } = setup();
  assert.equal(cfgRead(0, 0, 0, 4), 0x12378086);
  assert.equal(cfgRead(0, 0, 0x2c, 2), 0x1af4); // subsystem vendor SeaBIOS checks
  assert.equal(cfgRead(0, 0, 0x2e, 2), 0x1100);
  assert.equal(cfgRead(0, 0, 0x08, 4), 0x06000002); // class 06/00/00, revision 2
  assert.equal(cfgRead(1, 0, 0, 4), 0x70008086);
  assert.equal(cfgRead(1, 0, 0x0e, 1), 0x80); // multi-function
  assert.equal(cfgRead(1, 0, 0x0a, 2), 0x0601);
  assert.equal(cfgRead(1, 3, 0, 4), 0x71138086);
  assert.equal(cfgRead(1, 3, 0x0a, 2), 0x0680);
  // Byte and word reads at every offset of the data window.
  assert.equal(cfgRead(0, 0, 1, 1), 0x80);
  assert.equal(cfgRead(0, 0, 2, 2), 0x1237);
  assert.equal(cfgRead(0, 0, 3, 1), 0x12);
  // The address register reads back (bits 1:0 as zero).
  ctx.pio.write(0xcf8, 4, 0x80000003);
  assert.equal(ctx.pio.read(0xcf8, 4), 0x80000000);
});

test('disabled addresses, absent functions, other buses and split accesses read all ones', () => {
  const { cfgRead, ctx } = setup();
  ctx.pio.write(0xcf8, 4, 0x00000000); // enable bit clear
  assert.equal(ctx.pio.read(0xcfc, 4), 0xffffffff);
  ctx.pio.write(0xcfc, 4, 0); // ignored
  assert.equal(cfgRead(0, 0, 0, 4), 0x12378086);
  assert.equal(cfgRead(5, 0, 0, 4), 0xffffffff);
  assert.equal(cfgRead(1, 1, 0, 2), 0xffff);
  assert.equal(cfgRead(0, 0, 0, 4, 1), 0xffffffff);
  ctx.pio.write(0xcf8, 4, 0x80000000);
  assert.equal(ctx.pio.read(0xcff, 2), 0xffff); // would cross the dword
  assert.equal(ctx.pio.read(0xcfe, 4), 0xffffffff);
  // Byte writes to 0xcf8/0xcfa/0xcfb do not change the address register.
  ctx.pio.write(0xcfb, 1, 0x01);
  assert.equal(ctx.pio.read(0xcf8, 4), 0x80000000);
});

test('read-only identity registers ignore writes; command and interrupt line are writable', () => {
  const { cfgRead, cfgWrite } = setup();
  cfgWrite(0, 0, 0, 4, 0xdeadbeef);
  assert.equal(cfgRead(0, 0, 0, 4), 0x12378086);
  cfgWrite(1, 3, PCI_CFG.COMMAND, 2, 0xffff);
  assert.equal(cfgRead(1, 3, PCI_CFG.COMMAND, 2), 0x0547);
  cfgWrite(1, 3, PCI_CFG.INTERRUPT_LINE, 1, 9);
  assert.equal(cfgRead(1, 3, PCI_CFG.INTERRUPT_LINE, 1), 9);
  assert.equal(cfgRead(1, 3, PCI_CFG.INTERRUPT_PIN, 1), 1);
});

test('i440FX PAM and SMRAM registers read back what was written, within their valid bits', () => {
  const { cfgRead, cfgWrite, platform } = setup();
  // As SeaBIOS does it: dword writes at 0x58 and 0x5c.
  cfgWrite(0, 0, 0x58, 4, 0xffffffff);
  cfgWrite(0, 0, 0x5c, 4, 0x11113333);
  assert.equal(cfgRead(0, 0, 0x58, 1), 0, '0x58 is not a PAM register');
  assert.equal(cfgRead(0, 0, 0x59, 1), 0x30);
  assert.deepEqual(platform.hostBridge.pam, [0x30, 0x33, 0x33, 0x33, 0x33, 0x11, 0x11]);
  assert.equal(cfgRead(0, 0, 0x72, 1), 0x02);
  cfgWrite(0, 0, 0x72, 1, 0x4a);
  assert.equal(cfgRead(0, 0, 0x72, 1), 0x4a);
});

test('0xcf9 resets the machine when RCPU is written (0x06 and 0x04); other values are kept', () => {
  const { ctx, rec } = setup();
  ctx.pio.write(0xcf9, 1, 0x02);
  assert.equal(rec.resets, 0);
  assert.equal(ctx.pio.read(0xcf9, 1), 0x02);
  ctx.pio.write(0xcf9, 1, 0x06);
  assert.equal(rec.resets, 1);
  ctx.pio.write(0xcf9, 1, 0x04);
  assert.equal(rec.resets, 2);
  // A dword write at 0xcf8 is the address register, not a reset.
  ctx.pio.write(0xcf8, 4, 0x80000600);
  assert.equal(rec.resets, 2);
});

test('BAR sizing: all ones reads back the size mask and type bits', () => {
  const { platform, cfgRead, cfgWrite } = setup();
  platform.bus.attach(new TestDevice(), 3);
  const sizeOf = (reg: number) => {
    cfgWrite(3, 0, reg, 4, 0xffffffff);
    return cfgRead(3, 0, reg, 4);
  };
  assert.equal(sizeOf(0x10), 0xffffffe1); // 32 bytes of I/O
  assert.equal(sizeOf(0x14), 0xfffff000); // 4 KiB, 32-bit memory
  assert.equal(sizeOf(0x18), 0xfff0000c); // 1 MiB, 64-bit, prefetchable
  assert.equal(sizeOf(0x1c), 0xffffffff); // upper half of the 64-bit BAR
  assert.equal(sizeOf(0x20), 0); // no BAR 4
  assert.equal(sizeOf(0x30), 0xffff0001); // 64 KiB ROM (+ enable bit)
});

test('BARs decode only with their command bit, and move when reprogrammed', () => {
  const { ctx, platform, cfgWrite } = setup();
  const dev = new TestDevice();
  platform.bus.attach(dev, 3);
  cfgWrite(3, 0, 0x10, 4, 0xc001);
  cfgWrite(3, 0, 0x14, 4, 0xfebf0000);
  assert.equal(ctx.pio.ownerOf(0xc000), null);
  cfgWrite(3, 0, PCI_CFG.COMMAND, 2, PCI_COMMAND.IO | PCI_COMMAND.MEMORY);
  assert.equal(ctx.pio.ownerOf(0xc000), 'test-io');
  assert.equal(ctx.pio.ownerOf(0xc01f), 'test-io');
  assert.equal(ctx.pio.read(0xc010, 1), 0x42);
  assert.equal(ctx.mmio.read(0xfebf0010, 4), 0x43);
  assert.equal(dev.barAddress(0), 0xc000);
  assert.equal(dev.barAddress(1), 0xfebf0000);
  cfgWrite(3, 0, 0x10, 4, 0xd001);
  assert.equal(ctx.pio.ownerOf(0xc000), null);
  assert.equal(ctx.pio.ownerOf(0xd000), 'test-io');
  cfgWrite(3, 0, 0x18, 4, 0x0000000c);
  cfgWrite(3, 0, 0x1c, 4, 0x00000001);
  cfgWrite(3, 0, 0x18, 4, 0x00100000);
  assert.equal(dev.barAddress(2), 0x100100000);
  cfgWrite(3, 0, PCI_CFG.COMMAND, 2, 0);
  assert.equal(ctx.pio.ownerOf(0xd000), null);
  assert.equal(ctx.mmio.read(0xfebf0010, 4), 0xffffffff);
  assert.equal(dev.barAddress(2), null);
});

test('a BAR programmed over another device stays silent and is logged, never throws', () => {
  const { ctx, rec, platform, cfgWrite } = setup();
  platform.bus.attach(new TestDevice(), 3);
  cfgWrite(3, 0, 0x10, 4, 0xcf8 | 1); // over the PCI host's own ports (0xcf8 is 8-aligned, the BAR is 32)
  cfgWrite(3, 0, 0x10, 4, 0x0ce0 | 1);
  cfgWrite(3, 0, PCI_CFG.COMMAND, 2, PCI_COMMAND.IO);
  assert.equal(ctx.pio.ownerOf(0xcf8), 'pci-host');
  assert.match(rec.logs.join('\n'), /BAR 0 at 0xce0 not mapped/);
  // Disabling must not unregister the ports it never owned.
  cfgWrite(3, 0, PCI_CFG.COMMAND, 2, 0);
  assert.equal(ctx.pio.ownerOf(0xcf8), 'pci-host');
});

test('INTx: slot swizzle to a PIRQ, PIIX3 routing to an ISA IRQ, INTx disable', () => {
  const { rec, platform, cfgWrite } = setup();
  const dev = new TestDevice();
  platform.bus.attach(dev, 3);
  assert.equal(PciBus.pirqOf(3, 1), 2); // slot 3 INTA -> PIRQC
  dev.setIntx(true);
  assert.deepEqual(rec.irqs, [], 'routing disabled at reset');
  cfgWrite(1, 0, 0x62, 1, 11);
  assert.deepEqual(rec.irqs, [[11, true]]);
  cfgWrite(1, 0, 0x62, 1, 10);
  assert.deepEqual(rec.irqs.slice(1), [[11, false], [10, true]]);
  cfgWrite(3, 0, PCI_CFG.COMMAND, 2, PCI_COMMAND.INTX_DISABLE);
  assert.deepEqual(rec.irqs.slice(3), [[10, false]]);
  assert.equal(dev.getU16(PCI_CFG.STATUS) & 0x08, 0x08, 'status still shows the pending interrupt');
  cfgWrite(3, 0, PCI_CFG.COMMAND, 2, 0);
  assert.deepEqual(rec.irqs.slice(4), [[10, true]]);
  cfgWrite(1, 0, 0x62, 1, 0x80); // disable routing
  assert.deepEqual(rec.irqs.slice(5), [[10, false]]);
  cfgWrite(1, 0, 0x62, 1, 13); // reserved IRQ: not routed
  assert.equal(rec.irqs.length, 6);
});

test('two functions on one PIRQ keep the line up until both deassert', () => {
  const { rec, platform } = setup();
  const a = new TestDevice();
  const b = new TestDevice();
  platform.bus.attach(a, 2); // slot 2 INTA -> PIRQB
  platform.bus.attach(b, 6); // slot 6 INTA -> (0 + 5) & 3 = PIRQB
  platform.isaBridge.routePirqs([10, 10, 11, 11]);
  a.setIntx(true);
  b.setIntx(true);
  a.setIntx(false);
  assert.deepEqual(rec.irqs, [[10, true]]);
  b.setIntx(false);
  assert.deepEqual(rec.irqs, [[10, true], [10, false]]);
});

test('MSI is sent only when enabled and bus mastering is on, with the vector in the data', () => {
  const { rec, platform, cfgWrite, cfgRead } = setup();
  const dev = new TestDevice();
  platform.bus.attach(dev, 4);
  const cap = cfgRead(4, 0, PCI_CFG.CAPABILITY_LIST, 1);
  assert.equal(cap, dev.msi.offset);
  assert.equal(cfgRead(4, 0, cap, 1), 0x05);
  assert.equal(cfgRead(4, 0, PCI_CFG.STATUS, 2) & 0x10, 0x10);
  assert.equal(dev.msi.signal(0), false);
  cfgWrite(4, 0, cap + 4, 4, 0xfee01000);
  cfgWrite(4, 0, cap + 8, 4, 0);
  cfgWrite(4, 0, cap + 12, 2, 0x4041);
  cfgWrite(4, 0, cap + 2, 2, 0x0021); // enable, 4 vectors (MME = 2)
  assert.equal(dev.msi.signal(1), false, 'no bus mastering');
  cfgWrite(4, 0, PCI_CFG.COMMAND, 2, PCI_COMMAND.MASTER);
  assert.equal(dev.msi.signal(3), true);
  assert.equal(dev.msi.signal(4), false, 'beyond the enabled vectors');
  assert.deepEqual(rec.msis, [[0xfee01000, 0, 0x4043]]);
});

test('PIIX4 PM: S5 through PM1a_CNT powers off; other sleep types do not', () => {
  const { ctx, rec } = setup();
  const cnt = ACPI_PM_BASE + 4;
  ctx.pio.write(cnt, 2, PM1_CNT.SCI_EN | (5 << 10)); // SLP_TYP without SLP_EN
  assert.equal(rec.powerOffs, 0);
  ctx.pio.write(cnt, 2, PM1_CNT.SLP_EN | (1 << 10)); // S3: unsupported
  assert.equal(rec.powerOffs, 0);
  assert.match(rec.logs.join(), /sleep type 1/);
  assert.equal(ctx.pio.read(cnt, 2) & PM1_CNT.SLP_EN, 0, 'SLP_EN is write-only');
  ctx.pio.write(cnt, 2, PM1_CNT.SLP_EN | (0 << 10));
  assert.equal(rec.powerOffs, 1);
  // A byte write of the high half works too.
  ctx.pio.write(cnt + 1, 1, PM1_CNT.SLP_EN >> 8);
  assert.equal(rec.powerOffs, 2);
});

test('PIIX4 PM timer counts at 3.579545 MHz from the host clock and wraps at 24 bits', () => {
  let ns = 1_000_000_000n;
  const { ctx } = setup(() => ns);
  const tmr = ACPI_PM_BASE + 8;
  assert.equal(ctx.pio.read(tmr, 4), 0);
  ns += 1_000_000n; // 1 ms
  assert.equal(ctx.pio.read(tmr, 4), 3579);
  let last = ctx.pio.read(tmr, 4);
  for (let i = 0; i < 100; i++) {
    ns += 12_345_678n;
    const v = ctx.pio.read(tmr, 4);
    assert.ok(v > last || v < 0x100000, 'monotonic modulo 2^24');
    assert.ok(v <= 0xffffff);
    last = v;
  }
  ns = 1_000_000_000n + 5_000_000_000n; // 5 s: 17897725 ticks -> wrapped
  assert.equal(ctx.pio.read(tmr, 4), 17897725 & 0xffffff);
  // The timer-overflow status appeared (bit 23 changed) and clears on write.
  assert.equal(ctx.pio.read(ACPI_PM_BASE, 2) & PM1_STS.TMROF, PM1_STS.TMROF);
  ctx.pio.write(ACPI_PM_BASE, 2, PM1_STS.TMROF);
  assert.equal(ctx.pio.read(ACPI_PM_BASE, 2) & PM1_STS.TMROF, 0);
});

test('PIIX4 PM block follows PMBA/PMREGMISC and PMBA reads back consistently', () => {
  const { ctx, cfgRead, cfgWrite } = setup();
  assert.equal(cfgRead(1, 3, PIIX4_PMBA, 4), ACPI_PM_BASE | 1);
  assert.equal(ctx.pio.ownerOf(ACPI_PM_BASE), 'acpi-pm');
  cfgWrite(1, 3, PIIX4_PMBA, 4, 0xb000 | 1);
  assert.equal(cfgRead(1, 3, PIIX4_PMBA, 4), 0xb001);
  assert.equal(ctx.pio.ownerOf(ACPI_PM_BASE), null);
  assert.equal(ctx.pio.ownerOf(0xb03f), 'acpi-pm');
  cfgWrite(1, 3, PIIX4_PMREGMISC, 1, 0);
  assert.equal(ctx.pio.ownerOf(0xb000), null);
  cfgWrite(1, 3, PIIX4_PMBA, 4, 0x0cc0); // would cover 0xcf8: refused, logged
  cfgWrite(1, 3, PIIX4_PMREGMISC, 1, 1);
  assert.equal(ctx.pio.ownerOf(0xcf8), 'pci-host');
  assert.equal(ctx.pio.ownerOf(0xcc0), null);
  // SeaBIOS's SMM set-up is skipped: DEVACTB.APMC_EN reads set.
  assert.equal((cfgRead(1, 3, 0x58, 4) >>> 25) & 1, 1);
});

test('PIIX4 SCI: power button and GPE raise IRQ 9 when enabled; APM port toggles SCI_EN', () => {
  const { ctx, rec, platform } = setup();
  platform.pm.pressPowerButton();
  assert.deepEqual(rec.irqs, [], 'not enabled');
  ctx.pio.write(ACPI_PM_BASE + 2, 2, PM1_STS.PWRBTN);
  assert.deepEqual(rec.irqs, [[9, true]]);
  assert.equal(ctx.pio.read(ACPI_PM_BASE, 2) & PM1_STS.PWRBTN, PM1_STS.PWRBTN);
  ctx.pio.write(ACPI_PM_BASE, 2, PM1_STS.PWRBTN); // write 1 to clear
  assert.deepEqual(rec.irqs, [[9, true], [9, false]]);
  ctx.pio.write(ACPI_GPE0_BASE + 2, 1, 0x04);
  platform.pm.raiseGpe(2);
  assert.deepEqual(rec.irqs.slice(2), [[9, true]]);
  assert.equal(ctx.pio.read(ACPI_GPE0_BASE, 1), 0x04);
  ctx.pio.write(ACPI_GPE0_BASE, 1, 0x04);
  assert.deepEqual(rec.irqs.slice(3), [[9, false]]);
  ctx.pio.write(0xb2, 1, 0xf1);
  assert.equal(ctx.pio.read(ACPI_PM_BASE + 4, 2) & PM1_CNT.SCI_EN, 1);
  ctx.pio.write(0xb2, 1, 0xf0);
  assert.equal(ctx.pio.read(ACPI_PM_BASE + 4, 2) & PM1_CNT.SCI_EN, 0);
});

test('defineBar rejects impossible BARs', () => {
  const dev = new PciDevice('x', { vendorId: 1, deviceId: 2, classCode: 0 });
  assert.throws(() => dev.defineBar(0, { kind: 'io', size: 24 }), /power of two/);
  assert.throws(() => dev.defineBar(0, { kind: 'mem32', size: 8 }), /at least 16/);
  assert.throws(() => dev.defineBar(5, { kind: 'mem64', size: 4096 }), /two BAR slots/);
  assert.throws(() => dev.defineBar(7, { kind: 'mem32', size: 4096 }), /does not exist/);
  assert.throws(() => dev.defineBar(6, { kind: 'mem32', size: 1024 }), /at least 2 KiB/);
  dev.defineBar(2, { kind: 'mem64', size: 4096 });
  assert.throws(() => dev.defineBar(3, { kind: 'mem32', size: 4096 }), /overlaps a 64-bit BAR/);
});
