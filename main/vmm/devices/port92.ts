// System Control Port A (port 0x92, "fast A20 and reset" of PS/2 and later chipsets).
// Bit 1 gates A20 and bit 0 resets the CPU on a 0 → 1 transition; the other bits are
// kept and read back. A20 is recorded, not emulated: see devices/i8042.ts.
import type { DeviceFactory, IoDevice } from './device';

export const PORT92_RESET = 0x01;
export const PORT92_A20 = 0x02;

export class Port92 implements IoDevice {
  readonly name = 'port92';
  private value = PORT92_A20;

  constructor(private readonly requestReset: () => void) {}

  get a20(): boolean {
    return (this.value & PORT92_A20) !== 0;
  }

  read(): number {
    return this.value;
  }

  write(_offset: number, _size: number, value: number): void {
    const old = this.value;
    this.value = value & 0xff;
    if ((this.value & PORT92_RESET) !== 0 && (old & PORT92_RESET) === 0) {
      this.requestReset();
    }
  }
}

export const port92Device: DeviceFactory = (ctx) => {
  const d = new Port92(() => ctx.requestReset());
  return { name: d.name, instance: d, pio: [{ base: 0x92, length: 1, io: d }] };
};
