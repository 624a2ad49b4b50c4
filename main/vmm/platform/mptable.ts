// The Intel MultiProcessor Specification 1.4 tables (floating pointer + configuration
// table) describing CPUs, buses, the IOAPIC and interrupt wiring, for guests that do
// not use ACPI (Linux with acpi=off, old kernels). Also the platform's ISA interrupt
// wiring itself, which the ACPI MADT and KVM's GSI routing must agree with.
import type { IrqRoute } from '../../../native';
import { IOAPIC_BASE, IOAPIC_PINS, LAPIC_BASE } from './layout';

/** ISA IRQ 0 (the PIT) is wired to IOAPIC pin 2, as on PC chipsets; pin 0 carries the 8259's INTR. */
export const ISA_IRQ0_PIN = 2;

/** The IOAPIC pin ISA `irq` arrives on. */
export function isaIrqPin(irq: number): number {
  return irq === 0 ? ISA_IRQ0_PIN : irq;
}

/** IOAPIC id: the first id after the CPUs' APIC ids, so none collide. */
export function ioapicIdFor(cpus: number): number {
  return cpus;
}

/**
 * KVM GSI routes matching that wiring: GSI 0..15 reach the 8259s (except the cascade,
 * 2) and IOAPIC pin isaIrqPin(gsi); GSI 16..23 only the IOAPIC. KVM's default routing
 * is the identity, which would leave the PIT (GSI 0) on pin 0, where the tables say
 * nothing is.
 */
export function pcIrqRoutes(): IrqRoute[] {
  const routes: IrqRoute[] = [];
  for (let gsi = 0; gsi < 16; gsi++) {
    if (gsi === 2) continue;
    routes.push({ gsi, irqchip: { chip: gsi < 8 ? 0 : 1, pin: gsi & 7 } });
    routes.push({ gsi, irqchip: { chip: 2, pin: isaIrqPin(gsi) } });
  }
  for (let gsi = 16; gsi < IOAPIC_PINS; gsi++) routes.push({ gsi, irqchip: { chip: 2, pin: gsi } });
  return routes;
}

/** A PCI interrupt line wired to an IOAPIC pin: device `slot`, INTx `pin` (1 = INTA#). */
export interface PciIrqWire {
  slot: number;
  pin: number;
  gsi: number;
}

export interface MpTableOptions {
  cpus: number;
  /** CPUID leaf 1 EAX (family/model/stepping), for the processor entries. */
  cpuSignature?: number;
  /** CPUID leaf 1 EDX, for the processor entries. */
  featureFlags?: number;
  /** ISA IRQs that are level-triggered, active-high (the ACPI SCI). */
  levelIsaIrqs?: number[];
  /** PCI interrupt wiring on bus 0, if the machine has PCI devices using INTx. */
  pciIrqs?: PciIrqWire[];
}

export interface MpTables {
  /** Where the floating pointer goes; the configuration table follows it. */
  address: number;
  bytes: Uint8Array;
}

/** Default home: the start of the BIOS ROM area, which Linux scans for "_MP_". */
export const MPTABLE_ADDRESS = 0xf0000;

const ENTRY = { PROCESSOR: 0, BUS: 1, IOAPIC: 2, IO_INTERRUPT: 3, LOCAL_INTERRUPT: 4 } as const;
const INT_TYPE = { INT: 0, NMI: 1, SMI: 2, EXTINT: 3 } as const;
/** Polarity bits 0-1 (1 = active high), trigger bits 2-3 (1 = edge, 3 = level); 0 = bus default. */
const IRQ_FLAGS_CONFORMS = 0;
const IRQ_FLAGS_LEVEL_HIGH = 0x1 | (0x3 << 2);
const IRQ_FLAGS_LEVEL_LOW = 0x3 | (0x3 << 2);
const PCI_BUS = 0;
const ISA_BUS = 1;
const LAPIC_VERSION = 0x14;
const IOAPIC_VERSION = 0x11;
export const MP_SPEC_REVISION = 4;

/** Sum of bytes mod 256 made zero by the value this returns. */
export function checksumByte(bytes: Uint8Array): number {
  let sum = 0;
  for (const b of bytes) sum = (sum + b) & 0xff;
  return (0x100 - sum) & 0xff;
}

function ascii(b: Buffer, offset: number, text: string, width: number): void {
  b.fill(0x20, offset, offset + width);
  b.write(text.slice(0, width), offset, 'latin1');
}

/** Builds the floating pointer at `address` and the configuration table right after it. */
export function buildMpTable(opts: MpTableOptions, address = MPTABLE_ADDRESS): MpTables {
  const { cpus } = opts;
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 254) throw new Error(`an MP table cannot describe ${cpus} CPUs`);
  if (address % 16 !== 0) throw new Error('the MP floating pointer must be 16-byte aligned');
  const ioapicId = ioapicIdFor(cpus);
  const level = new Set(opts.levelIsaIrqs ?? []);
  const entries: Buffer[] = [];

  for (let cpu = 0; cpu < cpus; cpu++) {
    const e = Buffer.alloc(20);
    e[0] = ENTRY.PROCESSOR;
    e[1] = cpu; // local APIC id = vCPU index
    e[2] = LAPIC_VERSION;
    e[3] = 0x1 | (cpu === 0 ? 0x2 : 0); // enabled, bootstrap processor
    e.writeUInt32LE((opts.cpuSignature ?? 0x600) >>> 0, 4);
    e.writeUInt32LE((opts.featureFlags ?? 0x201) >>> 0, 8); // default: FPU + APIC
    entries.push(e);
  }
  for (const [id, name] of [[PCI_BUS, 'PCI'], [ISA_BUS, 'ISA']] as const) {
    const e = Buffer.alloc(8);
    e[0] = ENTRY.BUS;
    e[1] = id;
    ascii(e, 2, name, 6);
    entries.push(e);
  }
  const ioapic = Buffer.alloc(8);
  ioapic[0] = ENTRY.IOAPIC;
  ioapic[1] = ioapicId;
  ioapic[2] = IOAPIC_VERSION;
  ioapic[3] = 1; // usable
  ioapic.writeUInt32LE(IOAPIC_BASE, 4);
  entries.push(ioapic);

  const ioInterrupt = (type: number, flags: number, bus: number, busIrq: number, pin: number) => {
    const e = Buffer.alloc(8);
    e[0] = ENTRY.IO_INTERRUPT;
    e[1] = type;
    e.writeUInt16LE(flags, 2);
    e[4] = bus;
    e[5] = busIrq;
    e[6] = ioapicId;
    e[7] = pin;
    entries.push(e);
  };
  // The 8259's output reaches pin 0 (only used if the OS routes the timer through it).
  ioInterrupt(INT_TYPE.EXTINT, IRQ_FLAGS_CONFORMS, ISA_BUS, 0, 0);
  // ISA IRQs that PCI INTx lines are steered to are described by the PCI entries only.
  const pciPins = new Set((opts.pciIrqs ?? []).map((w) => w.gsi));
  for (let irq = 0; irq < 16; irq++) {
    if (irq === 2) continue; // the cascade: no device behind it
    if (pciPins.has(isaIrqPin(irq))) continue;
    ioInterrupt(INT_TYPE.INT, level.has(irq) ? IRQ_FLAGS_LEVEL_HIGH : IRQ_FLAGS_CONFORMS, ISA_BUS, irq, isaIrqPin(irq));
  }
  for (const w of opts.pciIrqs ?? []) {
    if (w.slot < 0 || w.slot > 31 || w.pin < 1 || w.pin > 4 || w.gsi < 0 || w.gsi >= IOAPIC_PINS) {
      throw new Error(`PCI interrupt wiring slot ${w.slot} INT${w.pin} -> GSI ${w.gsi} is out of range`);
    }
    // PCI source: bits 0-1 = INTx (0 = INTA#), bits 2-6 = device number.
    ioInterrupt(INT_TYPE.INT, IRQ_FLAGS_LEVEL_LOW, PCI_BUS, (w.slot << 2) | (w.pin - 1), w.gsi);
  }
  for (const [type, lint] of [[INT_TYPE.EXTINT, 0], [INT_TYPE.NMI, 1]] as const) {
    const e = Buffer.alloc(8);
    e[0] = ENTRY.LOCAL_INTERRUPT;
    e[1] = type;
    e.writeUInt16LE(IRQ_FLAGS_CONFORMS, 2);
    e[4] = ISA_BUS;
    e[5] = 0;
    e[6] = 0xff; // every local APIC
    e[7] = lint;
    entries.push(e);
  }

  const body = Buffer.concat(entries);
  const config = Buffer.alloc(44 + body.length);
  config.write('PCMP', 0, 'latin1');
  config.writeUInt16LE(config.length, 4);
  config[6] = MP_SPEC_REVISION;
  ascii(config, 8, 'PORTHOLE', 8);
  ascii(config, 16, 'VIRTUAL PC', 12);
  config.writeUInt16LE(entries.length, 34);
  config.writeUInt32LE(LAPIC_BASE, 36);
  body.copy(config, 44);
  config[7] = checksumByte(config);

  const floating = Buffer.alloc(16);
  floating.write('_MP_', 0, 'latin1');
  floating.writeUInt32LE(address + 16, 4);
  floating[8] = 1; // length in 16-byte units
  floating[9] = MP_SPEC_REVISION;
  // Feature bytes 1-5 zero: the configuration table is present, virtual wire mode (no IMCR).
  floating[10] = checksumByte(floating);

  const bytes = Buffer.concat([floating, config]);
  return { address, bytes: new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length) };
}
