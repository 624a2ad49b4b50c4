import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import {
  ACPI_TABLES_BASE, amlInteger, amlPkgLength, buildAcpiTables, buildDsdtAml, eisaId, type AcpiOptions, type AcpiTables,
} from '../../main/vmm/platform/acpi';
import {
  ACPI_GPE0_BASE, ACPI_PM1A_CNT, ACPI_PM1A_EVT, ACPI_PM_TMR, ACPI_S5_SLP_TYP, ACPI_SCI_IRQ, IOAPIC_BASE, LAPIC_BASE,
} from '../../main/vmm/platform/layout';

const sum = (b: Uint8Array) => b.reduce((s, x) => (s + x) & 0xff, 0);

/** Guest memory as the tables would be seen: a map from address to blob. */
class TableMemory {
  constructor(private readonly tables: AcpiTables) {}
  at(address: number): Buffer {
    const blob = this.tables.blobs.find((b) => b.address === address);
    assert.ok(blob, `nothing at 0x${address.toString(16)}`);
    return Buffer.from(blob.bytes);
  }
  /** A table, with its length and checksum verified. */
  table(address: number, signature: string): Buffer {
    const t = this.at(address);
    assert.equal(t.toString('latin1', 0, 4), signature);
    assert.equal(t.readUInt32LE(4), t.length, `${signature} length`);
    assert.equal(sum(t), 0, `${signature} checksum`);
    assert.equal(t.toString('latin1', 10, 16), 'PRTHLE');
    return t;
  }
}

function build(opts: Partial<AcpiOptions> = {}) {
  const tables = buildAcpiTables({ cpus: 1, ...opts });
  const mem = new TableMemory(tables);
  const rsdp = mem.at(tables.rsdpAddress);
  const xsdt = mem.table(Number(rsdp.readBigUInt64LE(24)), 'XSDT');
  const pointers = Array.from({ length: (xsdt.length - 36) / 8 }, (_, i) => Number(xsdt.readBigUInt64LE(36 + i * 8)));
  const bySig = new Map(pointers.map((p) => [mem.at(p).toString('latin1', 0, 4), mem.table(p, mem.at(p).toString('latin1', 0, 4))]));
  return { tables, mem, rsdp, xsdt, pointers, bySig };
}

test('RSDP: signature, both checksums, revision 2, in the BIOS area on a 16-byte boundary', () => {
  const { tables, rsdp, mem } = build();
  assert.equal(tables.rsdpAddress, ACPI_TABLES_BASE);
  assert.ok(tables.rsdpAddress >= 0xe0000 && tables.rsdpAddress + 36 <= 0x100000 && tables.rsdpAddress % 16 === 0);
  assert.equal(rsdp.toString('latin1', 0, 8), 'RSD PTR ');
  assert.equal(sum(rsdp.subarray(0, 20)), 0);
  assert.equal(sum(rsdp), 0);
  assert.equal(rsdp[15], 2);
  assert.equal(rsdp.readUInt32LE(20), 36);
  // The RSDT lists the same tables as the XSDT.
  const rsdt = mem.table(rsdp.readUInt32LE(16), 'RSDT');
  const xsdt = mem.table(Number(rsdp.readBigUInt64LE(24)), 'XSDT');
  assert.deepEqual(
    Array.from({ length: (rsdt.length - 36) / 4 }, (_, i) => rsdt.readUInt32LE(36 + i * 4)),
    Array.from({ length: (xsdt.length - 36) / 8 }, (_, i) => Number(xsdt.readBigUInt64LE(36 + i * 8))),
  );
});

test('tables do not overlap, stay below the MP table area, and the FACS is 64-byte aligned', () => {
  const { tables } = build({ cpus: 64, pci: { irqs: [], mmioBase: 0xc0000000, mmioEnd: 0xfec00000 } });
  const sorted = [...tables.blobs].sort((a, b) => a.address - b.address);
  for (let i = 1; i < sorted.length; i++) {
    assert.ok(sorted[i - 1].address + sorted[i - 1].bytes.length <= sorted[i].address, `${sorted[i - 1].signature} overlaps ${sorted[i].signature}`);
  }
  assert.ok(sorted[sorted.length - 1].address + sorted[sorted.length - 1].bytes.length <= 0xf0000);
  const facs = tables.blobs.find((b) => b.signature === 'FACS');
  assert.ok(facs && facs.address % 64 === 0 && facs.bytes.length === 64);
  assert.throws(() => buildAcpiTables({ cpus: 1 }, 0xe0000, 0xe0100), /do not fit below 0xe0100/);
});

test('FADT: legacy PM blocks at the layout ports, SCI, no SMI command, DSDT and FACS pointers', () => {
  const { bySig, mem } = build({ has8042: true });
  const fadt = bySig.get('FACP');
  assert.ok(fadt);
  assert.equal(fadt.length, 244);
  assert.equal(fadt[8], 3, 'revision');
  const facs = mem.at(fadt.readUInt32LE(36));
  assert.equal(facs.toString('latin1', 0, 4), 'FACS');
  assert.equal(fadt.readBigUInt64LE(132), 0n, 'only one FACS pointer');
  const dsdtAddr = fadt.readUInt32LE(40);
  assert.equal(Number(fadt.readBigUInt64LE(140)), dsdtAddr, 'X_DSDT = DSDT');
  mem.table(dsdtAddr, 'DSDT');
  assert.equal(fadt.readUInt16LE(46), ACPI_SCI_IRQ);
  assert.equal(fadt.readUInt32LE(48), 0, 'SMI_CMD 0: always in ACPI mode');
  assert.equal(fadt.readUInt32LE(56), ACPI_PM1A_EVT);
  assert.equal(fadt.readUInt32LE(64), ACPI_PM1A_CNT);
  assert.equal(fadt.readUInt32LE(76), ACPI_PM_TMR);
  assert.equal(fadt.readUInt32LE(80), ACPI_GPE0_BASE);
  assert.deepEqual([fadt[88], fadt[89], fadt[91], fadt[92]], [4, 2, 4, 4]);
  assert.equal(fadt.readUInt16LE(109) & 3, 3, 'legacy devices + 8042');
  assert.equal(build({ has8042: false }).bySig.get('FACP')?.readUInt16LE(109), 1);
  assert.equal(fadt.readUInt32LE(112) & (1 << 20), 0, 'not hardware-reduced');
  // The extended GAS copies agree with the 32-bit fields.
  for (const [gas, port, width] of [[148, ACPI_PM1A_EVT, 32], [172, ACPI_PM1A_CNT, 16], [208, ACPI_PM_TMR, 32], [220, ACPI_GPE0_BASE, 32]]) {
    assert.equal(fadt[gas], 1, 'system I/O');
    assert.equal(fadt[gas + 1], width);
    assert.equal(Number(fadt.readBigUInt64LE(gas + 4)), port);
  }
});

function madtEntries(madt: Buffer): { type: number; body: Buffer }[] {
  const out: { type: number; body: Buffer }[] = [];
  for (let o = 44; o < madt.length;) {
    const len = madt[o + 1];
    assert.ok(len >= 2 && o + len <= madt.length, 'MADT entry length');
    out.push({ type: madt[o], body: madt.subarray(o, o + len) });
    o += len;
  }
  return out;
}

test('MADT: one enabled local APIC per vCPU, the IOAPIC after them, IRQ0 -> GSI 2, SCI level/high, LINT1 NMI', () => {
  for (const cpus of [1, 2, 4, 64]) {
    const madt = build({ cpus }).bySig.get('APIC');
    assert.ok(madt);
    assert.equal(madt.readUInt32LE(36), LAPIC_BASE);
    assert.equal(madt.readUInt32LE(40) & 1, 1, 'PCAT_COMPAT');
    const entries = madtEntries(madt);
    const lapics = entries.filter((e) => e.type === 0);
    assert.equal(lapics.length, cpus);
    lapics.forEach((e, i) => {
      assert.equal(e.body[2], i, 'processor UID');
      assert.equal(e.body[3], i, 'APIC id');
      assert.equal(e.body.readUInt32LE(4) & 1, 1, 'enabled');
    });
    const ioapics = entries.filter((e) => e.type === 1);
    assert.equal(ioapics.length, 1);
    assert.equal(ioapics[0].body[2], cpus, 'IOAPIC id after the CPUs');
    assert.equal(ioapics[0].body.readUInt32LE(4), IOAPIC_BASE);
    assert.equal(ioapics[0].body.readUInt32LE(8), 0, 'GSI base');
    const overrides = entries.filter((e) => e.type === 2).map((e) => ({ irq: e.body[3], gsi: e.body.readUInt32LE(4), flags: e.body.readUInt16LE(8) }));
    assert.deepEqual(overrides, [{ irq: 0, gsi: 2, flags: 0 }, { irq: ACPI_SCI_IRQ, gsi: ACPI_SCI_IRQ, flags: 0xd }]);
    const nmis = entries.filter((e) => e.type === 4);
    assert.equal(nmis.length, 1);
    assert.deepEqual([nmis[0].body[2], nmis[0].body[5]], [0xff, 1]);
  }
  assert.throws(() => buildAcpiTables({ cpus: 0 }), /cannot describe 0 CPUs/);
});

test('DSDT: \\_S5 is Package(4) { SLP_TYP, SLP_TYP, 0, 0 } as hand-assembled AML', () => {
  const aml = Buffer.from(buildDsdtAml());
  const slpTyp = amlInteger(ACPI_S5_SLP_TYP);
  // NameOp "_S5_" PackageOp PkgLength NumElements=4 then the four integers.
  const expected = Buffer.from([0x08, 0x5f, 0x53, 0x35, 0x5f, 0x12, 2 + 2 * slpTyp.length + 2, 0x04, ...slpTyp, ...slpTyp, 0x00, 0x00]);
  assert.deepEqual(aml, expected);
  // With today's layout (SLP_TYP 0) that is exactly:
  if (ACPI_S5_SLP_TYP === 0) assert.equal(aml.toString('hex'), '085f53355f12060400000000');
});

test('AML encodings: PkgLength sizes, integers, EISA ids', () => {
  assert.deepEqual(amlPkgLength(5), [6]);
  assert.deepEqual(amlPkgLength(62), [63]);
  assert.deepEqual(amlPkgLength(63), [0x41, 0x04]); // 65 = 0x41: low nibble 1, next byte 4
  assert.deepEqual(amlPkgLength(0xffd), [0x4f, 0xff]);
  assert.deepEqual(amlPkgLength(0xffe), [0x80 | 0x1, 0x00, 0x01]); // 0x1001
  assert.deepEqual(amlInteger(0), [0x00]);
  assert.deepEqual(amlInteger(1), [0x01]);
  assert.deepEqual(amlInteger(5), [0x0a, 5]);
  assert.deepEqual(amlInteger(0x1234), [0x0b, 0x34, 0x12]);
  assert.deepEqual(amlInteger(0x0001ffff), [0x0c, 0xff, 0xff, 0x01, 0x00]);
  assert.deepEqual(amlInteger(2 ** 40), [0x0e, 0, 0, 0, 0, 0, 1, 0, 0]);
  assert.equal(eisaId('PNP0A03'), 0x030ad041);
  assert.equal(eisaId('PNP0501'), 0x0105d041);
  assert.throws(() => eisaId('pnp0a03'), /not an EISA id/);
});

test('DSDT with PCI: \\_SB.PCI0 with _HID PNP0A03 and one _PRT entry per wired INTx pin', () => {
  const irqs = [{ slot: 1, pin: 1, gsi: 11 }, { slot: 3, pin: 4, gsi: 10 }];
  const aml = Buffer.from(buildDsdtAml({ pci: { irqs, mmioBase: 0xc0000000, mmioEnd: 0xfec00000 } }));
  const s5Length = Buffer.from(buildDsdtAml()).length;
  assert.equal(aml[s5Length], 0x10, 'ScopeOp follows \\_S5');
  const scope = s5Length;
  assert.equal(aml.subarray(scope).indexOf(Buffer.from('\\_SB_', 'latin1')) > 0, true);
  const hid = aml.indexOf(Buffer.from('_HID', 'latin1'));
  assert.deepEqual([...aml.subarray(hid + 4, hid + 9)], [0x0c, 0x41, 0xd0, 0x0a, 0x03]);
  const prt = aml.indexOf(Buffer.from('_PRT', 'latin1'));
  assert.ok(prt > 0);
  // Package { 0x0001FFFF, 0, 0, 11 } and { 0x0003FFFF, 3, 0, 10 }
  assert.ok(aml.indexOf(Buffer.from([0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x01, 0x00, 0x00, 0x00, 0x0a, 11])) > prt);
  assert.ok(aml.indexOf(Buffer.from([0x12, 0x0c, 0x04, 0x0c, 0xff, 0xff, 0x03, 0x00, 0x0a, 0x03, 0x00, 0x0a, 10])) > prt);
  assert.throws(() => buildDsdtAml({ pci: { irqs: [{ slot: 32, pin: 1, gsi: 10 }], mmioBase: 0, mmioEnd: 1 } }), /out of range/);
});

// ACPICA's disassembler (the interpreter Linux uses) must read our tables back.
const iasl = (() => {
  try {
    execFileSync('iasl', ['-v'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

test('ACPICA (iasl -d) disassembles every table and finds the expected objects', { skip: iasl ? false : 'iasl (acpica-tools) is not installed' }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-acpi-'));
  try {
    const irqs = [{ slot: 1, pin: 1, gsi: 11 }, { slot: 2, pin: 2, gsi: 10 }];
    const { tables } = build({ cpus: 2, has8042: true, pci: { irqs, mmioBase: 0xc0000000, mmioEnd: 0xfec00000 } });
    const dsl: Record<string, string> = {};
    for (const blob of tables.blobs) {
      if (blob.signature === 'RSD PTR ') continue;
      const file = path.join(dir, `${blob.signature}.dat`);
      fs.writeFileSync(file, blob.bytes);
      const out = execFileSync('iasl', ['-d', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      assert.doesNotMatch(out, /error/i, `${blob.signature}: ${out}`);
      dsl[blob.signature] = fs.readFileSync(path.join(dir, `${blob.signature}.dsl`), 'utf8');
    }
    assert.match(dsl.DSDT, /Name \(_S5, Package \(0x04\)/);
    assert.match(dsl.DSDT, /Device \(PCI0\)/);
    assert.match(dsl.DSDT, /EisaId \("PNP0A03"\)/);
    assert.match(dsl.DSDT, /WordBusNumber \(ResourceProducer/);
    assert.match(dsl.DSDT, /0xFEBFFFFF,\s+\/\/ Range Maximum/);
    assert.match(dsl.DSDT, /0x0002FFFF,\s+One,\s+Zero,\s+0x0A/);
    assert.match(dsl.FACP, /SCI Interrupt : 0009/);
    assert.match(dsl.FACP, /PM1A Control Block Address : 00000604/);
    assert.match(dsl.FACP, /8042 Present on ports 60\/64 \(V2\) : 1/);
    assert.equal((dsl.APIC.match(/\[Processor Local APIC\]/g) ?? []).length, 2);
    assert.match(dsl.APIC, /I\/O Apic ID : 02/);
    assert.doesNotMatch(Object.values(dsl).join('\n'), /Invalid|Incorrect checksum/i);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
