// PIO and MMIO buses. Devices register ranges; each access is counted per device
// so the UI can graph where exits go.

export interface IoDevice {
  /** Shown in statistics and errors. */
  readonly name: string;
  /** offset is relative to the registered base; size is 1, 2, 4 or 8 bytes. */
  read(offset: number, size: number): number;
  write(offset: number, size: number, value: number): void;
}

export interface MmioDevice {
  readonly name: string;
  /** Returns the value read; for 8-byte accesses a bigint may be returned. */
  readMmio(offset: number, size: number): number | bigint;
  writeMmio(offset: number, size: number, value: bigint): void;
}

export interface DeviceCounters {
  name: string;
  reads: number;
  writes: number;
}

const UNASSIGNED = 0;

/** Port I/O bus: a 64 Ki table from port to device slot, so dispatch is one array lookup. */
export class PioBus {
  private readonly slotOfPort = new Uint16Array(0x10000);
  private readonly baseOfPort = new Uint16Array(0x10000);
  private readonly devices: (IoDevice | null)[] = [null];
  private readonly names: string[] = ['unassigned'];
  // Per-slot access counts in typed arrays: incremented on every PIO exit.
  private readCounts = new Float64Array(16);
  private writeCounts = new Float64Array(16);

  register(base: number, length: number, device: IoDevice): void {
    if (base < 0 || length <= 0 || base + length > 0x10000) {
      throw new Error(`${device.name}: port range 0x${base.toString(16)}+${length} is outside 0..0xffff`);
    }
    for (let p = base; p < base + length; p++) {
      const owner = this.slotOfPort[p];
      if (owner !== UNASSIGNED) {
        throw new Error(`${device.name}: port 0x${p.toString(16)} already belongs to ${this.devices[owner]?.name}`);
      }
    }
    let slot = this.devices.indexOf(device);
    if (slot < 0) {
      slot = this.devices.length;
      this.devices.push(device);
      this.names.push(device.name);
      if (slot >= this.readCounts.length) {
        const grow = (a: Float64Array) => { const b = new Float64Array(a.length * 2); b.set(a); return b; };
        this.readCounts = grow(this.readCounts);
        this.writeCounts = grow(this.writeCounts);
      }
    }
    for (let p = base; p < base + length; p++) {
      this.slotOfPort[p] = slot;
      this.baseOfPort[p] = base;
    }
  }

  unregister(base: number, length: number): void {
    for (let p = base; p < base + length && p < 0x10000; p++) this.slotOfPort[p] = UNASSIGNED;
  }

  read(port: number, size: number): number {
    const slot = this.slotOfPort[port];
    this.readCounts[slot]++;
    const device = this.devices[slot];
    if (device === null) return size === 4 ? 0xffffffff : size === 2 ? 0xffff : 0xff;
    return device.read(port - this.baseOfPort[port], size);
  }

  write(port: number, size: number, value: number): void {
    const slot = this.slotOfPort[port];
    this.writeCounts[slot]++;
    const device = this.devices[slot];
    if (device !== null) device.write(port - this.baseOfPort[port], size, value);
  }

  get counters(): DeviceCounters[] {
    return this.names.map((name, slot) => ({ name, reads: this.readCounts[slot], writes: this.writeCounts[slot] }));
  }

  ownerOf(port: number): string | null {
    return this.devices[this.slotOfPort[port]]?.name ?? null;
  }
}

interface MmioRange {
  base: number;
  end: number; // exclusive
  device: MmioDevice;
  counters: DeviceCounters;
}

/** MMIO bus over guest-physical addresses (numbers: < 2^53 is plenty for x86 physical space). */
export class MmioBus {
  private ranges: MmioRange[] = [];
  readonly unassigned: DeviceCounters = { name: 'unassigned', reads: 0, writes: 0 };

  register(base: number, length: number, device: MmioDevice): void {
    if (length <= 0) throw new Error(`${device.name}: empty MMIO range`);
    const end = base + length;
    for (const r of this.ranges) {
      if (base < r.end && r.base < end) {
        throw new Error(`${device.name}: MMIO 0x${base.toString(16)}+0x${length.toString(16)} overlaps ${r.device.name}`);
      }
    }
    this.ranges.push({ base, end, device, counters: { name: device.name, reads: 0, writes: 0 } });
    this.ranges.sort((a, b) => a.base - b.base);
  }

  unregister(device: MmioDevice, base?: number): void {
    this.ranges = this.ranges.filter((r) => !(r.device === device && (base === undefined || r.base === base)));
  }

  private find(addr: number): MmioRange | null {
    let lo = 0;
    let hi = this.ranges.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = this.ranges[mid];
      if (addr < r.base) hi = mid - 1;
      else if (addr >= r.end) lo = mid + 1;
      else return r;
    }
    return null;
  }

  read(addr: number, size: number): bigint {
    const r = this.find(addr);
    if (r === null || addr + size > r.end) {
      this.unassigned.reads++;
      return size >= 8 ? 0xffffffffffffffffn : BigInt(2 ** (size * 8) - 1);
    }
    r.counters.reads++;
    return BigInt(r.device.readMmio(addr - r.base, size));
  }

  write(addr: number, size: number, value: bigint): void {
    const r = this.find(addr);
    if (r === null || addr + size > r.end) {
      this.unassigned.writes++;
      return;
    }
    r.counters.writes++;
    r.device.writeMmio(addr - r.base, size, value);
  }

  get counters(): DeviceCounters[] {
    return [this.unassigned, ...this.ranges.map((r) => r.counters)];
  }
}
