// Small fixed-function ports: the debug console (0x402), the POST code port (0x80)
// and QEMU's isa-debug-exit (0xf4) for tests.
import type { IoDevice } from './bus';
import type { ByteRing } from '../shared/control';

/** QEMU/Bochs debug console: bytes written go to the host; reads return 0xe9 (present). */
export class DebugConsole implements IoDevice {
  readonly name = 'debugcon';
  dropped = 0;
  constructor(private readonly ring: ByteRing) {}
  read(): number {
    return 0xe9;
  }
  write(_offset: number, _size: number, value: number): void {
    if (!this.ring.push(value & 0xff)) this.dropped++;
  }
}

/** Port 0x80: firmware writes POST codes here; the last one is kept for diagnostics. */
export class PostCodePort implements IoDevice {
  readonly name = 'post-code';
  lastCode = 0;
  writes = 0;
  read(): number {
    return this.lastCode;
  }
  write(_offset: number, _size: number, value: number): void {
    this.lastCode = value & 0xff;
    this.writes++;
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
