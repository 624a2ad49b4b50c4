// The PC platform: which device models a machine has and where they sit.
import type { MachineContext } from '../devices/context';
import { DebugConsole, DebugExitPort, PostCodePort } from '../devices/simple';
import { I8042 } from '../devices/i8042';
import { Port92 } from '../devices/port92';
import { Uart16550 } from '../devices/uart16550';
import { irqLinesOf } from './irq';
import { COM_PORTS, FW_CFG_PORT_SEL } from './layout';
import { Cmos, CMOS_PORT } from '../devices/cmos';
import { FW_CFG_PORT_SPAN, FwCfg } from '../devices/fw-cfg';
import { buildPciPlatform, type PciPlatform } from '../devices/pci';
import { FOUR_GIB } from '../memory/guest-memory';
import { DmaMemory } from '../memory/dma';

/** What the host side needs of a UART: bytes in and modem status lines. */
export interface SerialPortModel {
  receive(data: Uint8Array): void;
  setModemStatus(lines: { cts: boolean; dsr: boolean; ri: boolean; dcd: boolean }): void;
}

export interface Platform {
  /** COM1..COM4 (null where a port is not present). */
  serial?: (SerialPortModel | null)[];
  debugcon: DebugConsole;
  postCode: PostCodePort;
  debugExit: DebugExitPort | null;
  i8042: I8042;
  port92: Port92;
  cmos: Cmos;
  /** QEMU-compatible firmware configuration; the firmware boot fills in its items. */
  fwCfg: FwCfg;
  /** i440FX host bridge, PIIX3 ISA bridge, PIIX4 PM (ACPI PM block, SCI, PM timer). */
  pci: PciPlatform;
}

export const DEBUGCON_RING = 4;

export function buildPlatform(ctx: MachineContext & { requestPowerOff(exitCode?: number): void }): Platform {
  const debugcon = new DebugConsole(ctx.serialRing(DEBUGCON_RING));
  ctx.pio.register(0x402, 1, debugcon);
  const postCode = new PostCodePort();
  ctx.pio.register(0x80, 1, postCode);
  let debugExit: DebugExitPort | null = null;
  if (ctx.config.debugExit) {
    debugExit = new DebugExitPort((status) => ctx.requestPowerOff(status));
    ctx.pio.register(0xf4, 1, debugExit);
  }
  const i8042 = new I8042(ctx);
  ctx.pio.register(0x60, 1, i8042.dataPort);
  ctx.pio.register(0x64, 1, i8042.commandPort);
  const port92 = new Port92(() => ctx.requestReset());
  ctx.pio.register(0x92, 1, port92);
  // COM1..COM4; COM1/COM3 share IRQ 4 and COM2/COM4 share IRQ 3 through wired-OR lines.
  const irqLines = irqLinesOf(ctx);
  const serial = COM_PORTS.map(({ base, irq }, port) => {
    const uart = new Uart16550({
      port, output: ctx.serialRing(port), irq: irqLines.pin(irq, `COM${port + 1}`),
      notifyHost: (message) => ctx.notifyHost(message),
      scheduleRetry: (retry) => { ctx.setTimer(1, retry); },
    });
    ctx.pio.register(base, 8, uart);
    return uart;
  });
  const cmos = new Cmos();
  const ramRanges = ctx.memory.ramRanges();
  cmos.setMemoryLayout({
    lowRamBytes: ramRanges.filter((r) => r.base < FOUR_GIB).reduce((n, r) => n + r.size, 0),
    highRamBytes: ramRanges.filter((r) => r.base >= FOUR_GIB).reduce((n, r) => n + r.size, 0),
    cpus: ctx.cpuCount,
  });
  ctx.pio.register(CMOS_PORT, 2, cmos);
  const fwCfg = new FwCfg(new DmaMemory(ctx.memory));
  ctx.pio.register(FW_CFG_PORT_SEL, FW_CFG_PORT_SPAN, fwCfg);
  const pci = buildPciPlatform(ctx);
  return { debugcon, postCode, debugExit, i8042, port92, serial, cmos, fwCfg, pci };
}
