// ACPI tables for guests booted without firmware: RSDP (2.0), RSDT, XSDT, FADT (3),
// FACS, DSDT (hand-assembled AML: \_S5 and, optionally, a PCI host bridge) and MADT.
// Builders are pure: each returns bytes for a given address, so the Linux loader can
// place them in RAM and a firmware path could hand the same tables over fw_cfg.
import {
  ACPI_GPE0_BASE, ACPI_PM1A_CNT, ACPI_PM1A_EVT, ACPI_PM_TMR, ACPI_S5_SLP_TYP, ACPI_SCI_IRQ, IOAPIC_BASE, IOAPIC_PINS,
  LAPIC_BASE,
} from './layout';
import { checksumByte, ioapicIdFor, ISA_IRQ0_PIN, type PciIrqWire } from './mptable';

export const ACPI_OEM_ID = 'PRTHLE';
export const ACPI_OEM_TABLE_ID = 'PORTHOLE';
const CREATOR_ID = 'PRTH';
const HEADER_SIZE = 36;

/** Where the Linux loader puts the tables: the BIOS area Linux scans for "RSD PTR ". */
export const ACPI_TABLES_BASE = 0xe0000;
export const ACPI_TABLES_LIMIT = 0xf0000;

const PM1_EVT_LEN = 4;
const PM1_CNT_LEN = 2;
const PM_TMR_LEN = 4;
const GPE0_BLK_LEN = 4;
/** CMOS register holding the century, for the RTC driver. */
const CMOS_CENTURY = 0x32;

export interface AcpiOptions {
  cpus: number;
  /** An i8042 keyboard controller exists (IAPC_BOOT_ARCH bit 1). */
  has8042?: boolean;
  /** A PCI host bridge on ports 0xcf8/0xcfc; its INTx wiring goes into _PRT. */
  pci?: { irqs: PciIrqWire[]; mmioBase: number; mmioEnd: number };
}

export interface AcpiBlob {
  signature: string;
  address: number;
  bytes: Uint8Array;
}

export interface AcpiTables {
  rsdpAddress: number;
  /** RSDP first, then every table; none overlap. */
  blobs: AcpiBlob[];
}

// --- common ----------------------------------------------------------------------

function asBytes(b: Buffer): Uint8Array {
  return new Uint8Array(b.buffer, b.byteOffset, b.length);
}

/** A table: the standard header (checksum filled in) followed by `body`. */
export function acpiTable(signature: string, revision: number, body: Uint8Array): Uint8Array {
  if (signature.length !== 4) throw new Error(`ACPI signature "${signature}" is not 4 characters`);
  const b = Buffer.alloc(HEADER_SIZE + body.length);
  b.write(signature, 0, 'latin1');
  b.writeUInt32LE(b.length, 4);
  b[8] = revision;
  b.write(ACPI_OEM_ID, 10, 'latin1');
  b.write(ACPI_OEM_TABLE_ID, 16, 'latin1');
  b.writeUInt32LE(1, 24); // OEM revision
  b.write(CREATOR_ID, 28, 'latin1');
  b.writeUInt32LE(1, 32); // creator revision
  b.set(body, HEADER_SIZE);
  b[9] = checksumByte(b);
  return asBytes(b);
}

/** Generic Address Structure for an I/O port block. */
function ioGas(port: number, bytes: number): Buffer {
  const g = Buffer.alloc(12);
  g[0] = 1; // system I/O space
  g[1] = bytes * 8;
  g[2] = 0;
  g[3] = bytes >= 4 ? 3 : bytes === 2 ? 2 : 1; // access size: dword/word/byte
  g.writeBigUInt64LE(BigInt(port), 4);
  return g;
}

// --- RSDP, RSDT, XSDT ------------------------------------------------------------

export function buildRsdp(rsdtAddress: number, xsdtAddress: number): Uint8Array {
  const b = Buffer.alloc(36);
  b.write('RSD PTR ', 0, 'latin1');
  b.write(ACPI_OEM_ID, 9, 'latin1');
  b[15] = 2; // ACPI 2.0+: XSDT present
  b.writeUInt32LE(rsdtAddress, 16);
  b.writeUInt32LE(36, 20);
  b.writeBigUInt64LE(BigInt(xsdtAddress), 24);
  b[8] = checksumByte(b.subarray(0, 20));
  b[32] = checksumByte(b);
  return asBytes(b);
}

export function buildRsdt(tableAddresses: number[]): Uint8Array {
  const body = Buffer.alloc(tableAddresses.length * 4);
  tableAddresses.forEach((a, i) => body.writeUInt32LE(a, i * 4));
  return acpiTable('RSDT', 1, body);
}

export function buildXsdt(tableAddresses: number[]): Uint8Array {
  const body = Buffer.alloc(tableAddresses.length * 8);
  tableAddresses.forEach((a, i) => body.writeBigUInt64LE(BigInt(a), i * 8));
  return acpiTable('XSDT', 1, body);
}

// --- FADT and FACS ---------------------------------------------------------------

export const FADT_FLAGS = {
  WBINVD: 1 << 0,
  PROC_C1: 1 << 2,
  /** Set: no fixed-feature sleep button. */
  SLP_BUTTON: 1 << 5,
  RTC_S4: 1 << 7,
} as const;

export const IAPC_BOOT_ARCH = { LEGACY_DEVICES: 1 << 0, I8042: 1 << 1 } as const;

/**
 * FADT revision 3 (ACPI 2.0, 244 bytes) for a legacy (not hardware-reduced) PC: the
 * PIIX4-style PM block in layout.ts, SCI on ACPI_SCI_IRQ, and SMI_CMD = 0, which means
 * the machine is always in ACPI mode, so no SMM handshake is needed. The fixed power
 * button is kept (PM1 PWRBTN) so a host-side "power button" can ask for a clean shutdown.
 */
export function buildFadt(opts: { dsdtAddress: number; facsAddress: number; has8042?: boolean }): Uint8Array {
  const b = Buffer.alloc(244 - HEADER_SIZE);
  const at = (offset: number) => offset - HEADER_SIZE;
  b.writeUInt32LE(opts.facsAddress, at(36));
  b.writeUInt32LE(opts.dsdtAddress, at(40));
  b[at(45)] = 0; // preferred PM profile: unspecified
  b.writeUInt16LE(ACPI_SCI_IRQ, at(46));
  b.writeUInt32LE(0, at(48)); // SMI_CMD: none
  b.writeUInt32LE(ACPI_PM1A_EVT, at(56));
  b.writeUInt32LE(ACPI_PM1A_CNT, at(64));
  b.writeUInt32LE(ACPI_PM_TMR, at(76));
  b.writeUInt32LE(ACPI_GPE0_BASE, at(80));
  b[at(88)] = PM1_EVT_LEN;
  b[at(89)] = PM1_CNT_LEN;
  b[at(91)] = PM_TMR_LEN;
  b[at(92)] = GPE0_BLK_LEN;
  b.writeUInt16LE(0xfff, at(96)); // P_LVL2_LAT > 100: no C2
  b.writeUInt16LE(0xfff, at(98)); // P_LVL3_LAT > 1000: no C3
  b[at(108)] = CMOS_CENTURY;
  b.writeUInt16LE(IAPC_BOOT_ARCH.LEGACY_DEVICES | (opts.has8042 ? IAPC_BOOT_ARCH.I8042 : 0), at(109));
  b.writeUInt32LE(FADT_FLAGS.WBINVD | FADT_FLAGS.PROC_C1 | FADT_FLAGS.SLP_BUTTON | FADT_FLAGS.RTC_S4, at(112));
  // X_FIRMWARE_CTRL stays 0: the spec allows only one of the two FACS pointers.
  b.writeBigUInt64LE(BigInt(opts.dsdtAddress), at(140));
  ioGas(ACPI_PM1A_EVT, PM1_EVT_LEN).copy(b, at(148));
  ioGas(ACPI_PM1A_CNT, PM1_CNT_LEN).copy(b, at(172));
  ioGas(ACPI_PM_TMR, PM_TMR_LEN).copy(b, at(208));
  ioGas(ACPI_GPE0_BASE, GPE0_BLK_LEN).copy(b, at(220));
  return acpiTable('FACP', 3, asBytes(b));
}

/** FACS (64 bytes, no checksum): where the OS's waking vector and the global lock live. */
export function buildFacs(): Uint8Array {
  const b = Buffer.alloc(64);
  b.write('FACS', 0, 'latin1');
  b.writeUInt32LE(64, 4);
  b[32] = 2; // version
  return asBytes(b);
}

// --- MADT ------------------------------------------------------------------------

const MADT_PCAT_COMPAT = 1;
/** MPS INTI flags: polarity bits 0-1 (1 = high), trigger bits 2-3 (3 = level). */
const INTI_LEVEL_HIGH = 0x1 | (0x3 << 2);

/**
 * MADT: one enabled local APIC per vCPU (processor UID = APIC id = index), the IOAPIC
 * (id after the CPUs, GSI base 0), ISA IRQ0 -> GSI 2, the SCI as level/active-high,
 * and LINT1 = NMI on every processor. PCAT_COMPAT: the 8259s exist.
 */
export function buildMadt(cpus: number): Uint8Array {
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 254) throw new Error(`a MADT cannot describe ${cpus} CPUs`);
  const parts: Buffer[] = [];
  const head = Buffer.alloc(8);
  head.writeUInt32LE(LAPIC_BASE, 0);
  head.writeUInt32LE(MADT_PCAT_COMPAT, 4);
  parts.push(head);
  for (let cpu = 0; cpu < cpus; cpu++) {
    const e = Buffer.alloc(8);
    e[0] = 0; e[1] = 8; e[2] = cpu; e[3] = cpu;
    e.writeUInt32LE(1, 4); // enabled
    parts.push(e);
  }
  const ioapic = Buffer.alloc(12);
  ioapic[0] = 1; ioapic[1] = 12; ioapic[2] = ioapicIdFor(cpus);
  ioapic.writeUInt32LE(IOAPIC_BASE, 4);
  ioapic.writeUInt32LE(0, 8); // GSI base
  parts.push(ioapic);
  const override = (irq: number, gsi: number, flags: number) => {
    const e = Buffer.alloc(10);
    e[0] = 2; e[1] = 10; e[2] = 0; /* ISA */ e[3] = irq;
    e.writeUInt32LE(gsi, 4);
    e.writeUInt16LE(flags, 8);
    parts.push(e);
  };
  override(0, ISA_IRQ0_PIN, 0);
  override(ACPI_SCI_IRQ, ACPI_SCI_IRQ, INTI_LEVEL_HIGH);
  const nmi = Buffer.alloc(6);
  nmi[0] = 4; nmi[1] = 6; nmi[2] = 0xff; // all processors
  nmi.writeUInt16LE(0, 3);
  nmi[5] = 1; // LINT1
  parts.push(nmi);
  return acpiTable('APIC', 1, asBytes(Buffer.concat(parts)));
}

// --- AML ---------------------------------------------------------------------------
// Just enough of the AML encoding (ACPI spec chapter 20) for the DSDT below.

/** PkgLength: the length of itself plus what follows, in 1 to 4 bytes. */
export function amlPkgLength(contentLength: number): number[] {
  for (let n = 1; n <= 4; n++) {
    const total = contentLength + n;
    if (n === 1 && total < 0x40) return [total];
    if (n > 1 && total < 1 << (4 + 8 * (n - 1))) {
      const out = [((n - 1) << 6) | (total & 0xf)];
      for (let i = 1; i < n; i++) out.push((total >> (4 + 8 * (i - 1))) & 0xff);
      return out;
    }
  }
  throw new Error(`AML package of ${contentLength} bytes is too long`);
}

/** An integer as the shortest constant: ZeroOp, OneOp, or Byte/Word/DWord/QWord prefix. */
export function amlInteger(value: number): number[] {
  if (!Number.isSafeInteger(value) || value < 0) throw new Error(`AML integer ${value} is out of range`);
  if (value === 0) return [0x00];
  if (value === 1) return [0x01];
  const sized = (prefix: number, bytes: number) => {
    const out = [prefix];
    for (let i = 0; i < bytes; i++) out.push(Math.floor(value / 2 ** (8 * i)) & 0xff);
    return out;
  };
  if (value <= 0xff) return sized(0x0a, 1);
  if (value <= 0xffff) return sized(0x0b, 2);
  if (value <= 0xffffffff) return sized(0x0c, 4);
  return sized(0x0e, 8);
}

/** A NameSeg: four characters, padded with '_'. */
function amlNameSeg(name: string): number[] {
  if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(name)) throw new Error(`"${name}" is not an AML name segment`);
  return [...name.padEnd(4, '_')].map((c) => c.charCodeAt(0));
}

/** NameOp: Name(name, object). */
function amlName(name: string, object: number[]): number[] {
  return [0x08, ...amlNameSeg(name), ...object];
}

/** PackageOp with NumElements elements. */
function amlPackage(elements: number[][]): number[] {
  const content = [elements.length, ...elements.flat()];
  return [0x12, ...amlPkgLength(content.length), ...content];
}

function amlString(text: string): number[] {
  return [0x0d, ...[...text].map((c) => c.charCodeAt(0) & 0x7f), 0x00];
}

function amlBuffer(data: number[]): number[] {
  const content = [...amlInteger(data.length), ...data];
  return [0x11, ...amlPkgLength(content.length), ...content];
}

/** DeviceOp (ExtOpPrefix 0x5B 0x82). */
function amlDevice(name: string, body: number[]): number[] {
  const content = [...amlNameSeg(name), ...body];
  return [0x5b, 0x82, ...amlPkgLength(content.length), ...content];
}

/** ScopeOp with a root-relative path like "\_SB". */
function amlScope(rootName: string, body: number[]): number[] {
  const content = [0x5c, ...amlNameSeg(rootName), ...body];
  return [0x10, ...amlPkgLength(content.length), ...content];
}

/** A compressed EISA id ("PNP0A03") as the 32-bit value _HID takes. */
export function eisaId(id: string): number {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new Error(`"${id}" is not an EISA id`);
  const c = (i: number) => id.charCodeAt(i) - 0x40;
  const vendor = (c(0) << 10) | (c(1) << 5) | c(2);
  const product = parseInt(id.slice(3), 16);
  // Stored big-endian: vendor word then product word, each byte-swapped into a dword.
  return (((vendor >> 8) & 0xff) | ((vendor & 0xff) << 8) | (((product >> 8) & 0xff) << 16) | ((product & 0xff) << 24)) >>> 0;
}

/** Resource descriptors (ACPI 6.4.3) for the PCI root bridge's _CRS. */
function wordBusNumber(min: number, max: number): number[] {
  // Large item 0x88 (Word Address Space), type 2 = bus number range.
  const len = max - min + 1;
  return [0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00, 0, 0, min & 0xff, min >> 8, max & 0xff, max >> 8, 0, 0, len & 0xff, len >> 8];
}
function wordIo(min: number, max: number): number[] {
  // Word Address Space, type 1 = I/O, flags 0x0c (min/max fixed), type-specific 3 (ISA and non-ISA ranges).
  const len = max - min + 1;
  return [0x88, 0x0d, 0x00, 0x01, 0x0c, 0x03, 0, 0, min & 0xff, min >> 8, max & 0xff, max >> 8, 0, 0, len & 0xff, len >> 8];
}
function ioPortDescriptor(base: number, length: number): number[] {
  // Small item 0x47: decodes 16 bits, min = max = base, alignment 1.
  return [0x47, 0x01, base & 0xff, base >> 8, base & 0xff, base >> 8, 0x01, length];
}
function dwordMemory(min: number, max: number): number[] {
  // Large item 0x87 (DWord Address Space), type 0 = memory, flags 0x0c, type-specific 1 (read/write, non-cacheable).
  const len = max - min + 1;
  const d = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
  return [0x87, 0x17, 0x00, 0x00, 0x0c, 0x01, ...d(0), ...d(min), ...d(max), ...d(0), ...d(len)];
}
const END_TAG = [0x79, 0x00];

/**
 * DSDT AML. Always:
 *   Name (\_S5, Package (4) { SLP_TYPa, SLP_TYPb, 0, 0 })
 * encoded as 08 '_S5_' 12 <PkgLength> 04 <int> <int> 00 00, with ACPI_S5_SLP_TYP for
 * both SLP_TYP values; Linux's poweroff writes SLP_TYPa << 10 | SLP_EN to PM1a_CNT.
 * With `pci`, also \_SB.PCI0 (PNP0A03, segment 0, bus 0) whose _CRS gives buses 0-255,
 * ports 0xcf8-0xcff (config), 0-0xcf7 and 0xd00-0xffff, and the 32-bit MMIO window, and
 * whose _PRT lists each { slot << 16 | 0xFFFF, INTx - 1, 0, GSI } (GSIs, no link devices).
 */
export function buildDsdtAml(opts: { pci?: AcpiOptions['pci'] } = {}): Uint8Array {
  const aml: number[] = [];
  aml.push(...amlName('_S5', amlPackage([
    amlInteger(ACPI_S5_SLP_TYP), amlInteger(ACPI_S5_SLP_TYP), amlInteger(0), amlInteger(0),
  ])));
  if (opts.pci) {
    const { irqs, mmioBase, mmioEnd } = opts.pci;
    const crs = [
      ...wordBusNumber(0, 0xff),
      ...ioPortDescriptor(0xcf8, 8),
      ...wordIo(0x0000, 0x0cf7),
      ...wordIo(0x0d00, 0xffff),
      ...dwordMemory(mmioBase, mmioEnd - 1),
      ...END_TAG,
    ];
    const prt = irqs.map((w) => {
      if (w.slot < 0 || w.slot > 31 || w.pin < 1 || w.pin > 4 || w.gsi < 0 || w.gsi >= IOAPIC_PINS) {
        throw new Error(`PCI interrupt wiring slot ${w.slot} INT${w.pin} -> GSI ${w.gsi} is out of range`);
      }
      return amlPackage([amlInteger(w.slot * 0x10000 + 0xffff), amlInteger(w.pin - 1), amlInteger(0), amlInteger(w.gsi)]);
    });
    aml.push(...amlScope('_SB', amlDevice('PCI0', [
      ...amlName('_HID', amlInteger(eisaId('PNP0A03'))),
      ...amlName('_UID', amlInteger(0)),
      ...amlName('_SEG', amlInteger(0)),
      ...amlName('_BBN', amlInteger(0)),
      ...amlName('_ADR', amlInteger(0)),
      ...amlName('_CRS', amlBuffer(crs)),
      ...amlName('_PRT', amlPackage(prt)),
    ])));
  }
  return Uint8Array.from(aml);
}

export function buildDsdt(opts: { pci?: AcpiOptions['pci'] } = {}): Uint8Array {
  return acpiTable('DSDT', 2, buildDsdtAml(opts));
}

// --- layout ------------------------------------------------------------------------

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/**
 * All tables laid out from `base`: RSDP (16-byte aligned, first, so a scan of the BIOS
 * area finds it), FACS (64-byte aligned), DSDT, FADT, MADT, RSDT, XSDT.
 */
export function buildAcpiTables(opts: AcpiOptions, base = ACPI_TABLES_BASE, limit = ACPI_TABLES_LIMIT): AcpiTables {
  if (base % 16 !== 0) throw new Error('ACPI tables must start 16-byte aligned');
  let next = base + 36;
  const place = (bytes: Uint8Array, align: number) => {
    const address = alignUp(next, align);
    next = address + bytes.length;
    return address;
  };
  const facs = buildFacs();
  const facsAddress = place(facs, 64);
  const dsdt = buildDsdt({ pci: opts.pci });
  const dsdtAddress = place(dsdt, 16);
  const fadt = buildFadt({ dsdtAddress, facsAddress, has8042: opts.has8042 });
  const fadtAddress = place(fadt, 16);
  const madt = buildMadt(opts.cpus);
  const madtAddress = place(madt, 16);
  const pointed = [fadtAddress, madtAddress];
  const rsdt = buildRsdt(pointed);
  const rsdtAddress = place(rsdt, 16);
  const xsdt = buildXsdt(pointed);
  const xsdtAddress = place(xsdt, 16);
  if (next > limit) throw new Error(`ACPI tables (${next - base} bytes) do not fit below 0x${limit.toString(16)}`);
  return {
    rsdpAddress: base,
    blobs: [
      { signature: 'RSD PTR ', address: base, bytes: buildRsdp(rsdtAddress, xsdtAddress) },
      { signature: 'FACS', address: facsAddress, bytes: facs },
      { signature: 'DSDT', address: dsdtAddress, bytes: dsdt },
      { signature: 'FACP', address: fadtAddress, bytes: fadt },
      { signature: 'APIC', address: madtAddress, bytes: madt },
      { signature: 'RSDT', address: rsdtAddress, bytes: rsdt },
      { signature: 'XSDT', address: xsdtAddress, bytes: xsdt },
    ],
  };
}
