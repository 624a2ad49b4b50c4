// Cross-check of our tables against the PIIX4 PM device model: doing what Linux's
// poweroff does with the values read from our FADT and DSDT must power the machine off.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildAcpiTables } from '../../main/vmm/platform/acpi';
import { MmioBus, PioBus } from '../../main/vmm/devices/bus';
import { buildPciPlatform } from '../../main/vmm/devices/pci';

/** Decodes an AML integer constant (ZeroOp, OneOp, Byte/Word/DWord prefix). */
function amlInt(aml: Buffer, at: number): { value: number; next: number } {
  const op = aml[at];
  if (op === 0x00) return { value: 0, next: at + 1 };
  if (op === 0x01) return { value: 1, next: at + 1 };
  if (op === 0x0a) return { value: aml[at + 1], next: at + 2 };
  if (op === 0x0b) return { value: aml.readUInt16LE(at + 1), next: at + 3 };
  if (op === 0x0c) return { value: aml.readUInt32LE(at + 1), next: at + 5 };
  throw new Error(`unexpected AML op 0x${op.toString(16)}`);
}

test('Linux-style S5 entry through our FADT and \\_S5 powers off the PIIX4 PM model', () => {
  const tables = buildAcpiTables({ cpus: 1 });
  const blob = (sig: string) => Buffer.from(tables.blobs.find((b) => b.signature === sig)?.bytes ?? []);
  const fadt = blob('FACP');
  const dsdt = blob('DSDT');
  const pm1aCnt = fadt.readUInt32LE(64);
  // \_S5: NameOp "_S5_" PackageOp PkgLength(1 byte here) NumElements, then SLP_TYPa, SLP_TYPb.
  const name = dsdt.indexOf(Buffer.from([0x08, 0x5f, 0x53, 0x35, 0x5f]));
  assert.ok(name >= 36);
  assert.equal(dsdt[name + 5], 0x12);
  const slpTypA = amlInt(dsdt, name + 8).value;

  const pio = new PioBus();
  let powerOffs = 0;
  const ctx = {
    pio, mmio: new MmioBus(), setIrq: () => {}, signalMsi: () => {}, requestReset: () => {},
    requestPowerOff: () => { powerOffs++; }, log: () => {},
  };
  buildPciPlatform(ctx);
  // acpi_hw_legacy_sleep: clear SLP_TYP/SLP_EN, write SLP_TYP, then SLP_TYP | SLP_EN.
  const cnt = pio.read(pm1aCnt, 2) & ~(0x1c00 | 0x2000);
  pio.write(pm1aCnt, 2, cnt | (slpTypA << 10));
  assert.equal(powerOffs, 0, 'SLP_TYP alone does nothing');
  pio.write(pm1aCnt, 2, cnt | (slpTypA << 10) | 0x2000);
  assert.equal(powerOffs, 1);
});
