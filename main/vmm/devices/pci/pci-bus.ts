// PCI bus 0 and the host's configuration mechanism #1: the address register at 0xcf8
// (dword, bit 31 enables), data at 0xcfc-0xcff (byte/word/dword), and the PIIX reset
// control register, a byte at 0xcf9 in the middle of the address register.
import type { MmioBus, PioBus } from '../bus';
import { allOnes, type IoDevice } from '../io-device';
import type { ConfigWriteResult, PciDevice } from './pci-device';
import type { GuestMemory } from '../../memory/guest-memory';

export const PCI_CONFIG_ADDRESS_PORT = 0xcf8;
export const PCI_HOST_PORT_SPAN = 8;
/** Reset control register bits (PIIX3 RC): SRST selects a hard reset, RCPU resets. */
export const RCR_SYS_RESET = 0x02;
export const RCR_RESET_CPU = 0x04;

export interface PciBusContext {
  readonly pio: PioBus;
  readonly mmio: MmioBus;
  /** Guest memory for the functions' DMA; without it every DMA is refused. */
  readonly memory?: GuestMemory;
  log(text: string): void;
  signalMsi(addressLo: number, addressHi: number, data: number): void;
}

/** Where PCI INTx pins go after the slot swizzle: the PIIX3 PIRQ router. */
export interface IntxRouter {
  /** `source` identifies the asserting function pin; PIRQ `pirq` (0..3 = A..D). */
  setPirq(source: number, pirq: number, level: boolean): void;
  /** The ISA IRQ (= GSI) PIRQ `pirq` is steered to now, or null. */
  routeOf?(pirq: number): number | null;
  /** Calls `listener` after the guest reprogrammed the PIRQ steering. */
  onRouteChange?(listener: () => void): void;
}

export class PciBus {
  private readonly functions = new Map<number, PciDevice>();
  router: IntxRouter | null = null;

  constructor(private readonly ctx: PciBusContext) {}

  get pio(): PioBus { return this.ctx.pio; }
  get mmio(): MmioBus { return this.ctx.mmio; }
  get memory(): GuestMemory | undefined { return this.ctx.memory; }
  log(text: string): void { this.ctx.log(text); }
  signalMsi(addressLo: number, addressHi: number, data: number): void {
    this.ctx.signalMsi(addressLo, addressHi, data);
  }

  attach(device: PciDevice, slot: number, fn = 0): void {
    if (!Number.isInteger(slot) || slot < 0 || slot > 31 || !Number.isInteger(fn) || fn < 0 || fn > 7) {
      throw new Error(`${device.name}: PCI address ${slot}.${fn} is not valid`);
    }
    const devfn = (slot << 3) | fn;
    const owner = this.functions.get(devfn);
    if (owner) throw new Error(`${device.name}: PCI 00:${hex2(slot)}.${fn} already holds ${owner.name}`);
    if (device.bus) throw new Error(`${device.name} is already on a PCI bus`);
    device.bus = this;
    device.slot = slot;
    device.function = fn;
    this.functions.set(devfn, device);
    device.attached();
    this.apply(device, device.mappingsAtAttach());
  }

  /**
   * Maps and unmaps what a configuration write of `device` changed. Runs after the
   * device's write returned, never inside it. A block that cannot be registered (a guest
   * may program overlapping BARs) stays silent, as on hardware where decode conflicts.
   */
  private apply(device: PciDevice, changes: ConfigWriteResult): void {
    const { pio, mmio } = this.ctx;
    for (const m of changes.unmap) {
      if (m.space === 'io') pio.unregister(m.base, m.length, m.io);
      else mmio.unregister(m.io, m.base);
    }
    for (const m of changes.map) {
      try {
        if (m.space === 'io') pio.register(m.base, m.length, m.io);
        else mmio.register(m.base, m.length, m.io);
      } catch (e) {
        const what = m.bar === undefined ? m.io.name : `BAR ${m.bar}`;
        this.log(`${device.name}: ${what} at 0x${m.base.toString(16)} not mapped: ${(e as Error).message}`);
      }
    }
  }

  functionAt(devfn: number): PciDevice | undefined {
    return this.functions.get(devfn);
  }

  get devices(): PciDevice[] {
    return [...this.functions.entries()].sort((a, b) => a[0] - b[0]).map((e) => e[1]);
  }

  /** INTx of `device` (pin 1..4) through the i440FX/PIIX slot swizzle to a PIRQ. */
  setIntx(device: PciDevice, pin: number, level: boolean): void {
    const pirq = PciBus.pirqOf(device.slot, pin);
    const source = ((device.slot << 3) | device.function) * 4 + (pin - 1);
    this.router?.setPirq(source, pirq, level);
  }

  /** The GSI INTx pin `pin` (1..4) of `device` reaches now (an irqfd may drive it directly), or null. */
  intxGsi(device: PciDevice, pin: number): number | null {
    if (pin < 1 || pin > 4) return null;
    return this.router?.routeOf?.(PciBus.pirqOf(device.slot, pin)) ?? null;
  }

  /** Calls `listener` whenever intxGsi's answers may have changed (the guest reprogrammed PIRQ steering). */
  onIntxRouteChange(listener: () => void): void {
    this.router?.onRouteChange?.(listener);
  }

  /** The PIRQ (0..3 = A..D) INTx pin `pin` (1..4) of a function in `slot` drives. */
  static pirqOf(slot: number, pin: number): number {
    return (pin - 1 + slot - 1) & 3;
  }

  readConfig(bus: number, devfn: number, register: number, size: number): number {
    const device = bus === 0 ? this.functions.get(devfn) : undefined;
    if (!device) return allOnes(size);
    return device.readConfig(register, size);
  }

  writeConfig(bus: number, devfn: number, register: number, size: number, value: number): void {
    const device = bus === 0 ? this.functions.get(devfn) : undefined;
    if (device === undefined) return;
    const changes = device.writeConfig(register, size, value);
    if (changes !== null) this.apply(device, changes);
  }
}

/** Ports 0xcf8-0xcff. */
export class PciHost implements IoDevice {
  readonly name = 'pci-host';
  /** CONFIG_ADDRESS as last written (bits 1:0 read as zero). */
  address = 0;
  /** PIIX reset control register at 0xcf9. */
  resetControl = 0;

  constructor(private readonly bus: PciBus, private readonly requestReset: () => void) {}

  read(offset: number, size: number): number {
    if (offset === 0 && size === 4) return this.address;
    if (offset === 1 && size === 1) return this.resetControl;
    if (offset >= 4) {
      const target = this.decode(offset, size);
      return target === null ? allOnes(size) : this.bus.readConfig(target.bus, target.devfn, target.register, size);
    }
    return allOnes(size);
  }

  write(offset: number, size: number, value: number): void {
    if (offset === 0 && size === 4) {
      this.address = (value & 0xfffffffc) >>> 0;
      return;
    }
    if (offset === 1 && size === 1) {
      // As QEMU: RCPU set resets the machine (soft and hard alike; we only rebuild).
      if (value & RCR_RESET_CPU) this.requestReset();
      else this.resetControl = value & RCR_SYS_RESET;
      return;
    }
    if (offset >= 4) {
      const target = this.decode(offset, size);
      if (target !== null) this.bus.writeConfig(target.bus, target.devfn, target.register, size, value);
    }
  }

  /** The configuration register an access to 0xcfc+n addresses, or null (disabled, crosses a dword). */
  private decode(offset: number, size: number): { bus: number; devfn: number; register: number } | null {
    const a = this.address;
    if (!(a & 0x80000000)) return null;
    const byte = offset - 4;
    if (byte + size > 4) return null;
    return { bus: (a >>> 16) & 0xff, devfn: (a >>> 8) & 0xff, register: (a & 0xfc) + byte };
  }
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}
