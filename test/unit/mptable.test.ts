import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IOAPIC_BASE, LAPIC_BASE } from '../../main/vmm/platform/layout';
import { buildMpTable, isaIrqPin, ISA_IRQ0_PIN, MPTABLE_ADDRESS, pcIrqRoutes, type MpTableOptions } from '../../main/vmm/platform/mptable';

const sum = (b: Uint8Array) => b.reduce((s, x) => (s + x) & 0xff, 0);

interface Parsed {
  floating: Buffer;
  config: Buffer;
  processors: { apicId: number; flags: number }[];
  buses: { id: number; type: string }[];
  ioapics: { id: number; flags: number; address: number }[];
  ioInts: { type: number; flags: number; bus: number; irq: number; apic: number; pin: number }[];
  localInts: { type: number; apic: number; lint: number }[];
}

/** Parses the tables as Linux's mpparse does, checking lengths, order and checksums on the way. */
function parse(opts: MpTableOptions): Parsed {
  const t = buildMpTable(opts);
  const all = Buffer.from(t.bytes);
  const floating = all.subarray(0, 16);
  assert.equal(floating.toString('latin1', 0, 4), '_MP_');
  assert.equal(sum(floating), 0, 'floating pointer checksum');
  assert.equal(floating[8], 1);
  assert.equal(floating[9], 4, 'MP spec 1.4');
  assert.equal(floating[11], 0, 'feature byte 1: a configuration table follows');
  const configAt = floating.readUInt32LE(4) - t.address;
  assert.equal(configAt, 16);
  const config = all.subarray(configAt);
  assert.equal(config.toString('latin1', 0, 4), 'PCMP');
  assert.equal(config.readUInt16LE(4), config.length);
  assert.equal(sum(config), 0, 'configuration table checksum');
  assert.equal(config.readUInt32LE(36), LAPIC_BASE);
  const p: Parsed = { floating, config, processors: [], buses: [], ioapics: [], ioInts: [], localInts: [] };
  let lastType = 0;
  let o = 44;
  for (let n = 0; n < config.readUInt16LE(34); n++) {
    const type = config[o];
    assert.ok(type >= lastType, 'entries sorted by type');
    lastType = type;
    if (type === 0) {
      p.processors.push({ apicId: config[o + 1], flags: config[o + 3] });
      o += 20;
      continue;
    }
    const e = config.subarray(o, o + 8);
    if (type === 1) p.buses.push({ id: e[1], type: e.toString('latin1', 2, 8) });
    else if (type === 2) p.ioapics.push({ id: e[1], flags: e[3], address: e.readUInt32LE(4) });
    else if (type === 3) p.ioInts.push({ type: e[1], flags: e.readUInt16LE(2), bus: e[4], irq: e[5], apic: e[6], pin: e[7] });
    else if (type === 4) p.localInts.push({ type: e[1], apic: e[6], lint: e[7] });
    else assert.fail(`unknown entry type ${type}`);
    o += 8;
  }
  assert.equal(o, config.length, 'entry count matches the length');
  return p;
}

test('one enabled processor per vCPU, the BSP flagged, APIC ids 0..n-1', () => {
  for (const cpus of [1, 2, 8, 64]) {
    const p = parse({ cpus });
    assert.equal(p.processors.length, cpus);
    p.processors.forEach((c, i) => {
      assert.equal(c.apicId, i);
      assert.equal(c.flags, i === 0 ? 3 : 1);
    });
  }
});

test('buses, the IOAPIC after the CPUs, and legacy local interrupts', () => {
  const p = parse({ cpus: 4 });
  assert.deepEqual(p.buses, [{ id: 0, type: 'PCI   ' }, { id: 1, type: 'ISA   ' }]);
  assert.deepEqual(p.ioapics, [{ id: 4, flags: 1, address: IOAPIC_BASE }]);
  assert.deepEqual(p.localInts, [{ type: 3, apic: 0xff, lint: 0 }, { type: 1, apic: 0xff, lint: 1 }]);
});

test('ISA IRQs 0-15 (not the cascade) reach the IOAPIC, IRQ 0 on pin 2, level IRQs flagged', () => {
  const p = parse({ cpus: 2, levelIsaIrqs: [9] });
  const isa = p.ioInts.filter((e) => e.bus === 1 && e.type === 0);
  assert.deepEqual(isa.map((e) => e.irq), [0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
  for (const e of isa) {
    assert.equal(e.apic, 2);
    assert.equal(e.pin, e.irq === 0 ? ISA_IRQ0_PIN : e.irq);
    assert.equal(e.flags, e.irq === 9 ? 0xd : 0);
  }
  // The 8259's output on pin 0 as ExtINT.
  assert.deepEqual(p.ioInts.filter((e) => e.type === 3), [{ type: 3, flags: 0, bus: 1, irq: 0, apic: 2, pin: 0 }]);
});

test('PCI INTx wiring: one level/low entry per pin, and the ISA entries for those IRQs are left out', () => {
  const p = parse({ cpus: 1, pciIrqs: [{ slot: 1, pin: 1, gsi: 10 }, { slot: 2, pin: 3, gsi: 11 }] });
  const pci = p.ioInts.filter((e) => e.bus === 0);
  assert.deepEqual(pci, [
    { type: 0, flags: 0xf, bus: 0, irq: (1 << 2) | 0, apic: 1, pin: 10 },
    { type: 0, flags: 0xf, bus: 0, irq: (2 << 2) | 2, apic: 1, pin: 11 },
  ]);
  const isaIrqs = p.ioInts.filter((e) => e.bus === 1 && e.type === 0).map((e) => e.irq);
  assert.ok(!isaIrqs.includes(10) && !isaIrqs.includes(11) && isaIrqs.includes(9));
  assert.throws(() => buildMpTable({ cpus: 1, pciIrqs: [{ slot: 1, pin: 5, gsi: 10 }] }), /out of range/);
});

test('the floating pointer lives where Linux scans (the BIOS area) and bad inputs are refused', () => {
  assert.equal(MPTABLE_ADDRESS, 0xf0000);
  const t = buildMpTable({ cpus: 64, pciIrqs: Array.from({ length: 124 }, (_, i) => ({ slot: 1 + (i >> 2), pin: 1 + (i & 3), gsi: 10 })) });
  assert.ok(t.address + t.bytes.length <= 0x100000);
  assert.throws(() => buildMpTable({ cpus: 0 }), /cannot describe 0 CPUs/);
  assert.throws(() => buildMpTable({ cpus: 1 }, 0xf0008), /16-byte aligned/);
});

test('KVM GSI routes match the tables: GSI 0 to the PIC and IOAPIC pin 2, no route for the cascade', () => {
  const routes = pcIrqRoutes();
  const ioapic = (gsi: number) => routes.filter((r) => r.gsi === gsi && r.irqchip?.chip === 2).map((r) => r.irqchip?.pin);
  const pic = (gsi: number) => routes.filter((r) => r.gsi === gsi && r.irqchip && r.irqchip.chip < 2).map((r) => r.irqchip);
  assert.deepEqual(ioapic(0), [2]);
  assert.deepEqual(pic(0), [{ chip: 0, pin: 0 }]);
  assert.equal(routes.filter((r) => r.gsi === 2).length, 0);
  for (let gsi = 1; gsi < 24; gsi++) {
    if (gsi === 2) continue;
    assert.deepEqual(ioapic(gsi), [isaIrqPin(gsi)]);
    assert.deepEqual(pic(gsi), gsi < 16 ? [{ chip: gsi < 8 ? 0 : 1, pin: gsi & 7 }] : []);
  }
});
