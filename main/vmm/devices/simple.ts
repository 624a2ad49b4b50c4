// Small fixed-function ports: the debug console (0x402), the POST code port (0x80)
// and QEMU's isa-debug-exit (0xf4) for tests.
import { counter, type Counter, type DeviceFactory, type IoDevice, privateStatistics } from './device';
import type { ByteRing } from '../shared/control';
import type { StatsRegistry } from '../shared/stats';
import { DEBUG_EXIT_PORT, DEBUGCON_PORT, DEBUGCON_RING } from '../platform/layout';

/** QEMU/Bochs debug console: bytes written go to the host; reads return 0xe9 (present). */
export class DebugConsole implements IoDevice {
  readonly name = 'debugcon';
  readonly counters: { droppedBytes: Counter };
  constructor(private readonly ring: ByteRing, statistics: StatsRegistry = privateStatistics()) {
    this.counters = { droppedBytes: counter(statistics, this.name, 'dropped-bytes', 'bytes') };
  }
  read(): number {
    return 0xe9;
  }
  write(_offset: number, _size: number, value: number): void {
    if (!this.ring.push(value & 0xff)) this.counters.droppedBytes.add();
  }
}

/** Port 0x80: firmware writes POST codes here; the last one is kept for diagnostics. */
export class PostCodePort implements IoDevice {
  readonly name = 'post-code';
  lastCode = 0;
  read(): number {
    return this.lastCode;
  }
  write(_offset: number, _size: number, value: number): void {
    this.lastCode = value & 0xff;
  }
}

/** isa-debug-exit: a write of v ends the VM with exit status (v << 1) | 1, as in QEMU. */
export class DebugExitPort implements IoDevice {
  readonly name = 'debug-exit';
  exitStatus: number | null = null;
  constructor(private readonly onExit: (status: number) => void) {}
  read(): number {
    return 0xff;
  }
  write(_offset: number, _size: number, value: number): void {
    this.exitStatus = ((value << 1) | 1) & 0xff;
    this.onExit(this.exitStatus);
  }
}

export const debugConsoleDevice: DeviceFactory = (ctx) => {
  const d = new DebugConsole(ctx.serialRing(DEBUGCON_RING), ctx.statistics);
  return { name: d.name, instance: d, pio: [{ base: DEBUGCON_PORT, length: 1, io: d }], counters: d.counters };
};

export const postCodeDevice: DeviceFactory = () => {
  const d = new PostCodePort();
  return { name: d.name, instance: d, pio: [{ base: 0x80, length: 1, io: d }] };
};

/** Only with config.debugExit (tests and benches end a VM through it). */
export const debugExitDevice: DeviceFactory = (ctx) => {
  if (!ctx.config.debugExit) return null;
  const d = new DebugExitPort((status) => ctx.requestPowerOff(status));
  return { name: d.name, instance: d, pio: [{ base: DEBUG_EXIT_PORT, length: 1, io: d }] };
};
