// The one device interface. A register block answers PIO and MMIO the same way:
// read(offset, size) returns a number, write(offset, size, value) takes one. No BigInt.
//
// Sizes are 1, 2 or 4 bytes. An 8-byte MMIO access (a 64-bit mov) reaches a register
// block as one call only if it implements read64/write64, with the value as two 32-bit
// halves; otherwise the bus splits it into two 4-byte accesses, low half (offset) first,
// then high half (offset + 4), which is what a 32-bit PCI device sees of a 64-bit access
// on real hardware. A device whose registers must see both halves at once (a 64-bit
// doorbell or a 64-bit table entry) implements the 64-bit pair.
//
// A device model (DeviceModel) is what the machine is built from: a list of them in
// platform/pc.ts. It declares its name, where its register blocks decode (I/O ranges, or
// PCI functions whose BARs the PCI bus maps), the interrupt lines it drives, what it adds
// to the firmware tables (ACPI, MP), the messages the VM host may send it, and its
// counters (in the statistics registry).
import type { MmioBus, PioBus } from './bus';
import type { MachineContext } from './context';
import type { PciBus } from './pci/pci-bus';
import type { PciDevice } from './pci/pci-device';
import type { Counter, IoDevice } from './io-device';
import type { IrqPin } from '../platform/irq';
import type { PciIrqWire } from '../platform/mptable';

export { allOnes, Counter, counter, type IoDevice, privateStatistics } from './io-device';


/** A register block at a fixed place in port or memory space. */
export interface IoRange {
  base: number;
  length: number;
  io: IoDevice;
}

/** A PCI function and where it sits on bus 0. */
export interface PciFunctionPlacement {
  slot: number;
  fn: number;
  device: PciDevice;
}

/**
 * What a device adds to the firmware tables a direct (firmware-less) boot builds. Read at
 * boot, after the loader set the platform up, so it describes the device's current state.
 */
export interface TableFragment {
  /** FADT IAPC_BOOT_ARCH bits (the i8042 adds "8042 present"). */
  bootArch?: number;
  /** ISA IRQs that are level-triggered, active high (the ACPI SCI): MP table entries. */
  levelIsaIrqs?: number[];
  /** A PCI root bridge: the DSDT's \_SB.PCI0 with its _PRT, and the MP table's PCI entries. */
  pciRoot?: { irqs: PciIrqWire[]; mmioBase: number; mmioEnd: number };
}

/** A record from the VM host on the device's channel target (shared/channel.ts). */
export type HostMessageHandler = (kind: number, payload: Uint8Array) => void;

/** Which channel target a device listens on, and its handler (kinds are the device's own). */
export interface HostMessages {
  readonly target: number;
  readonly handle: HostMessageHandler;
}

export interface DeviceModel<T = unknown> {
  /** Unique in a machine: statistics and lookups use it ('COM1', 'i8042'). */
  readonly name: string;
  /** The device object itself, for boot code and tests (machine.devices.instance(name)). */
  readonly instance?: T;
  /** Register blocks on the port bus. */
  readonly pio?: readonly IoRange[];
  /** Register blocks on the memory bus (fixed addresses; BARs belong to PCI functions). */
  readonly mmio?: readonly IoRange[];
  /** PCI functions on bus 0; the PCI bus maps their BARs as the guest programs them. */
  readonly pci?: readonly PciFunctionPlacement[];
  /** GSIs this device drives (shared, wired-OR lines; see platform/irq.ts). */
  readonly irqs?: readonly number[];
  /** Its part of the ACPI and MP tables. */
  tables?(): TableFragment;
  /** Messages from the VM host: the channel target the device owns, and its handler. */
  readonly hostMessages?: HostMessages;
  /** Its own counters in the statistics registry (bus accesses are counted by the buses). */
  readonly counters?: Readonly<Record<string, Counter>>;
  /** A PCI bus this model brings (the host bridge); later models' functions attach to it. */
  readonly pciBus?: PciBus;
  /** Releases host resources (image files and their locks) when the machine ends or is rebuilt. */
  close?(): void;
  /** Its internal state in one line, for the dump of a guest that stopped making progress (SIGUSR2). */
  describeState?(): string;
}

/** What a device factory gets: the machine, and its shared interrupt lines. */
export interface DeviceContext extends MachineContext {
  /** Connects device `name` to GSI `gsi` (a wired-OR line other devices may share). */
  irqPin(gsi: number, name: string): IrqPin;
  requestPowerOff(exitCode?: number): void;
}

/** Makes one device of a machine (null: not in this configuration, e.g. isa-debug-exit). */
export type DeviceFactory = (ctx: DeviceContext) => DeviceModel | null;



/** Where a device model's declared blocks go. */
export interface DeviceBuses {
  readonly pio: PioBus;
  readonly mmio: MmioBus;
}

/**
 * Registers a model's I/O ranges and attaches its PCI functions to `pciBus` (which maps
 * their BARs). Throws on a conflict: the device list is ours, not the guest's.
 */
export function installDevice(buses: DeviceBuses, model: DeviceModel, pciBus?: PciBus): void {
  for (const r of model.pio ?? []) buses.pio.register(r.base, r.length, r.io);
  for (const r of model.mmio ?? []) buses.mmio.register(r.base, r.length, r.io);
  if (model.pci && model.pci.length > 0) {
    if (!pciBus) throw new Error(`${model.name}: has PCI functions but the machine has no PCI bus`);
    for (const p of model.pci) pciBus.attach(p.device, p.slot, p.fn);
  }
}
