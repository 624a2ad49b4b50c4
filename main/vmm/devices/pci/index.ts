// The i440FX/PIIX PCI platform: bus 0, configuration mechanism #1, the host bridge at
// 00:00.0, the PIIX3 ISA bridge at 00:01.0 and the PIIX4 PM function at 00:01.3.
import type { MmioBus, PioBus } from '../bus';
import { type DeviceFactory, type DeviceModel, installDevice } from '../device';
import type { GuestMemory } from '../../memory/guest-memory';
import { irqLinesOf, type IrqPin } from '../../platform/irq';
import type { PciIrqWire } from '../../platform/mptable';
import { ACPI_GPE0_BASE, ACPI_SCI_IRQ, PCI_MMIO_BASE, PCI_MMIO_END } from '../../platform/layout';
import { I440fxHostBridge } from './i440fx';
import { PCI_CONFIG_ADDRESS_PORT, PCI_HOST_PORT_SPAN, PciBus, PciHost } from './pci-bus';
import { APM_CNT_PORT, Piix3IsaBridge, Piix4Pm, PIRQ_VALID_IRQS } from './piix';

export * from './i440fx';
export * from './pci-bus';
export * from './pci-device';
export * from './piix';
export * from './msix';

export interface PciPlatformContext {
  readonly pio: PioBus;
  readonly mmio: MmioBus;
  /** Guest memory the functions reach by DMA (see PciDevice.dma). */
  readonly memory?: GuestMemory;
  setIrq(gsi: number, level: boolean): void;
  signalMsi(addressLo: number, addressHi: number, data: number): void;
  requestReset(): void;
  requestPowerOff(): void;
  log(text: string): void;
}

export interface PciPlatform {
  bus: PciBus;
  host: PciHost;
  hostBridge: I440fxHostBridge;
  isaBridge: Piix3IsaBridge;
  pm: Piix4Pm;
}

/**
 * The PCI platform as a device model: ports 0xcf8-0xcff, the PM function's fixed GPE0 and
 * APM ports, the three functions on bus 0, the SCI, and its part of the firmware tables
 * (the root bridge, its INTx wiring as the PIRQ routers are programmed, the SCI as level).
 */
export function createPciPlatform(ctx: PciPlatformContext, opts: { clockNs?: () => bigint } = {}): { platform: PciPlatform; model: DeviceModel } {
  const bus = new PciBus(ctx);
  const host = new PciHost(bus, () => ctx.requestReset());
  const hostBridge = new I440fxHostBridge();
  // PCI INTx and the SCI share ISA IRQs with other devices through wired-OR lines.
  const lines = irqLinesOf(ctx);
  const intxPins = new Map<number, IrqPin>();
  const intxPin = (irq: number): IrqPin => {
    let pin = intxPins.get(irq);
    if (!pin) {
      pin = lines.pin(irq, 'pci-intx');
      intxPins.set(irq, pin);
    }
    return pin;
  };
  const isaBridge = new Piix3IsaBridge((irq, level) => intxPin(irq).set(level));
  bus.router = isaBridge;
  const sci = lines.pin(ACPI_SCI_IRQ, 'acpi-sci');
  const pm = new Piix4Pm({
    setSci: (level) => sci.set(level),
    requestPowerOff: () => ctx.requestPowerOff(),
    log: (text) => ctx.log(text),
    clockNs: opts.clockNs,
  });
  const platform: PciPlatform = { bus, host, hostBridge, isaBridge, pm };
  const model: DeviceModel = {
    name: 'pci',
    pio: [
      { base: PCI_CONFIG_ADDRESS_PORT, length: PCI_HOST_PORT_SPAN, io: host },
      { base: ACPI_GPE0_BASE, length: 4, io: pm.gpeIo },
      { base: APM_CNT_PORT, length: 2, io: pm.apmIo },
    ],
    pci: [{ slot: 0, fn: 0, device: hostBridge }, { slot: 1, fn: 0, device: isaBridge }, { slot: 1, fn: 3, device: pm }],
    irqs: [ACPI_SCI_IRQ, ...PIRQ_VALID_IRQS],
    tables: () => ({
      levelIsaIrqs: [ACPI_SCI_IRQ],
      pciRoot: { irqs: pciIrqWiringOf([0, 1, 2, 3].map((p) => isaBridge.routeOf(p))), mmioBase: PCI_MMIO_BASE, mmioEnd: PCI_MMIO_END },
    }),
  };
  return { platform, model };
}

/** The i440FX/PIIX platform in a machine's device list; PCI devices after it attach to its bus. */
export const pciPlatformDevice: DeviceFactory = (ctx) => {
  const { platform, model } = createPciPlatform(ctx);
  return { ...model, instance: platform, pciBus: platform.bus };
};

/** Builds the PCI platform and installs it on `ctx`'s buses (for tests and tools). */
export function buildPciPlatform(ctx: PciPlatformContext, opts: { clockNs?: () => bigint } = {}): PciPlatform {
  const { platform, model } = createPciPlatform(ctx, opts);
  installDevice(ctx, model, platform.bus);
  return platform;
}

/**
 * Every INTx pin of slots 1..31 through the i440FX/PIIX swizzle to the ISA IRQ its PIRQ
 * is steered to (`pirqIrqs[0..3]`, null: not routed, left out).
 */
export function pciIrqWiringOf(pirqIrqs: readonly (number | null)[]): PciIrqWire[] {
  const wires: PciIrqWire[] = [];
  for (let slot = 1; slot < 32; slot++) {
    for (let pin = 1; pin <= 4; pin++) {
      const gsi = pirqIrqs[PciBus.pirqOf(slot, pin)];
      if (gsi !== null && gsi !== undefined) wires.push({ slot, pin, gsi });
    }
  }
  return wires;
}
