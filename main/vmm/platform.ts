// The PC platform: which device models a machine has and where they sit.
import type { MachineContext } from './context';
import { DebugConsole, DebugExitPort, PostCodePort } from './devices/simple';

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
  return { debugcon, postCode, debugExit };
}
