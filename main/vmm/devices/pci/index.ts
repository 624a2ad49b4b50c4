// The i440FX/PIIX PCI platform: bus 0, configuration mechanism #1, the host bridge at
// 00:00.0, the PIIX3 ISA bridge at 00:01.0 and the PIIX4 PM function at 00:01.3.
import type { MmioBus, PioBus } from '../bus';
import type { GuestMemory } from '../../memory/guest-memory';
import { irqLinesOf, type IrqPin } from '../../platform/irq';
import { ACPI_SCI_IRQ } from '../../platform/layout';
import { I440fxHostBridge } from './i440fx';
import { PCI_CONFIG_ADDRESS_PORT, PCI_HOST_PORT_SPAN, PciBus, PciHost } from './pci-bus';
import { Piix3IsaBridge, Piix4Pm } from './piix';

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

export function buildPciPlatform(ctx: PciPlatformContext, opts: { clockNs?: () => bigint } = {}): PciPlatform {
  const bus = new PciBus(ctx);
  const host = new PciHost(bus, () => ctx.requestReset());
  ctx.pio.register(PCI_CONFIG_ADDRESS_PORT, PCI_HOST_PORT_SPAN, host);
  const hostBridge = new I440fxHostBridge();
  bus.attach(hostBridge, 0, 0);
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
  bus.attach(isaBridge, 1, 0);
  bus.router = isaBridge;
  const sci = lines.pin(ACPI_SCI_IRQ, 'acpi-sci');
  const pm = new Piix4Pm({
    setSci: (level) => sci.set(level),
    requestPowerOff: () => ctx.requestPowerOff(),
    log: (text) => ctx.log(text),
    clockNs: opts.clockNs,
  });
  bus.attach(pm, 1, 3);
  return { bus, host, hostBridge, isaBridge, pm };
}
