// PIO and MMIO buses. Devices register ranges of one interface (device.ts); every access
// is counted per device in the statistics registry (group = the device's name, names
// pio-reads, pio-writes, mmio-reads, mmio-writes), so the UI can graph where exits go.
//
// The increments are plain stores, not Atomics.add: a bus and its devices live on the
// machine thread, which dispatches every vCPU's exits, so each of these counters has one
// writer and no count can be lost; the VM host reads them with Atomics.load. A locked add
// costs about 25 ns here, a tenth of the budget of an exit (see test/bench/README.md).
import { allOnes, type IoDevice, privateStatistics } from './io-device';
import type { StatsRegistry } from '../shared/stats';

export type { IoDevice } from './io-device';

const UNASSIGNED = 0;
const UNASSIGNED_NAME = 'unassigned';

/**
 * Port I/O bus: a 64 Ki table from port to (device slot << 16 | base port), so dispatch is
 * one array lookup that touches one memory page.
 */
export class PioBus {
  private readonly entryOfPort = new Uint32Array(0x10000);
  private readonly devices: (IoDevice | null)[] = [null];
  /** The registry's counts and, per device slot, the counter slots of its reads and writes. */
  private readonly counts: Uint32Array;
  private readSlot = new Int32Array(16);
  private writeSlot = new Int32Array(16);

  constructor(readonly statistics: StatsRegistry = privateStatistics()) {
    this.counts = statistics.counts;
    this.readSlot[UNASSIGNED] = statistics.counter(UNASSIGNED_NAME, 'pio-reads');
    this.writeSlot[UNASSIGNED] = statistics.counter(UNASSIGNED_NAME, 'pio-writes');
  }

  register(base: number, length: number, device: IoDevice): void {
    if (!Number.isInteger(base) || !Number.isInteger(length) || base < 0 || length <= 0 || base + length > 0x10000) {
      throw new Error(`${device.name}: port range 0x${base.toString(16)}+${length} is outside 0..0xffff`);
    }
    for (let p = base; p < base + length; p++) {
      const owner = this.entryOfPort[p] >>> 16;
      if (owner !== UNASSIGNED) {
        throw new Error(`${device.name}: port 0x${p.toString(16)} already belongs to ${this.devices[owner]?.name}`);
      }
    }
    let slot = this.devices.indexOf(device);
    if (slot < 0) {
      slot = this.devices.length;
      if (slot > 0xffff) throw new Error(`${device.name}: the port bus has no room for another device`);
      this.devices.push(device);
      if (slot >= this.readSlot.length) {
        const grow = (a: Int32Array) => { const b = new Int32Array(a.length * 2); b.set(a); return b; };
        this.readSlot = grow(this.readSlot);
        this.writeSlot = grow(this.writeSlot);
      }
      this.readSlot[slot] = this.statistics.counter(device.name, 'pio-reads');
      this.writeSlot[slot] = this.statistics.counter(device.name, 'pio-writes');
    }
    for (let p = base; p < base + length; p++) this.entryOfPort[p] = ((slot << 16) | base) >>> 0;
  }

  /** Frees ports base..base+length-1; with `device`, only the ports it owns. */
  unregister(base: number, length: number, device?: IoDevice): void {
    const slot = device === undefined ? -1 : this.devices.indexOf(device);
    if (device !== undefined && slot < 0) return;
    for (let p = Math.max(0, base); p < base + length && p < 0x10000; p++) {
      if (slot < 0 || this.entryOfPort[p] >>> 16 === slot) this.entryOfPort[p] = UNASSIGNED;
    }
  }

  read(port: number, size: number): number {
    const entry = this.entryOfPort[port];
    const slot = entry >>> 16;
    this.counts[this.readSlot[slot]]++;
    const device = this.devices[slot];
    if (device === null) return allOnes(size);
    return device.read(port - (entry & 0xffff), size);
  }

  write(port: number, size: number, value: number): void {
    const entry = this.entryOfPort[port];
    const slot = entry >>> 16;
    this.counts[this.writeSlot[slot]]++;
    const device = this.devices[slot];
    if (device !== null) device.write(port - (entry & 0xffff), size, value);
  }

  ownerOf(port: number): string | null {
    return this.devices[this.entryOfPort[port] >>> 16]?.name ?? null;
  }
}

interface MmioRange {
  base: number;
  end: number; // exclusive
  device: IoDevice;
  readSlot: number;
  writeSlot: number;
}

/**
 * MMIO bus over guest-physical addresses (numbers: < 2^53 is plenty for x86 physical
 * space). Accesses of 1, 2 and 4 bytes go through read/write; 8-byte accesses through
 * read64/write64, which hand a device its two halves (see device.ts).
 */
export class MmioBus {
  private ranges: MmioRange[] = [];
  private readonly counts: Uint32Array;
  private readonly unassignedReads: number;
  private readonly unassignedWrites: number;
  /** The range of the last access: a device's registers are usually hit again. */
  private last: MmioRange | null = null;

  constructor(readonly statistics: StatsRegistry = privateStatistics()) {
    this.counts = statistics.counts;
    this.unassignedReads = statistics.counter(UNASSIGNED_NAME, 'mmio-reads');
    this.unassignedWrites = statistics.counter(UNASSIGNED_NAME, 'mmio-writes');
  }

  register(base: number, length: number, device: IoDevice): void {
    if (!Number.isSafeInteger(base) || !Number.isSafeInteger(length) || base < 0 || length <= 0) {
      throw new Error(`${device.name}: MMIO range 0x${base.toString(16)}+0x${length.toString(16)} is not valid`);
    }
    const end = base + length;
    for (const r of this.ranges) {
      if (base < r.end && r.base < end) {
        throw new Error(`${device.name}: MMIO 0x${base.toString(16)}+0x${length.toString(16)} overlaps ${r.device.name}`);
      }
    }
    this.ranges.push({
      base, end, device,
      readSlot: this.statistics.counter(device.name, 'mmio-reads'),
      writeSlot: this.statistics.counter(device.name, 'mmio-writes'),
    });
    this.ranges.sort((a, b) => a.base - b.base);
  }

  unregister(device: IoDevice, base?: number): void {
    this.ranges = this.ranges.filter((r) => !(r.device === device && (base === undefined || r.base === base)));
    this.last = null;
  }

  /** The range holding all of addr..addr+size-1, or null. */
  private find(addr: number, size: number): MmioRange | null {
    const last = this.last;
    if (last !== null && addr >= last.base && addr + size <= last.end) return last;
    let lo = 0;
    let hi = this.ranges.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = this.ranges[mid];
      if (addr < r.base) hi = mid - 1;
      else if (addr >= r.end) lo = mid + 1;
      else {
        // An access that runs past the end of a range is unassigned.
        if (addr + size > r.end) return null;
        this.last = r;
        return r;
      }
    }
    return null;
  }

  read(addr: number, size: number): number {
    const r = this.find(addr, size);
    if (r === null) {
      this.counts[this.unassignedReads]++;
      return allOnes(size);
    }
    this.counts[r.readSlot]++;
    return r.device.read(addr - r.base, size);
  }

  write(addr: number, size: number, value: number): void {
    const r = this.find(addr, size);
    if (r === null) {
      this.counts[this.unassignedWrites]++;
      return;
    }
    this.counts[r.writeSlot]++;
    r.device.write(addr - r.base, size, value);
  }

  /** An 8-byte read: halves[0] gets the low 32 bits, halves[1] the high 32 bits. */
  read64(addr: number, halves: Uint32Array): void {
    const r = this.find(addr, 8);
    if (r === null) {
      this.counts[this.unassignedReads]++;
      halves[0] = 0xffffffff;
      halves[1] = 0xffffffff;
      return;
    }
    this.counts[r.readSlot]++;
    const offset = addr - r.base;
    const device = r.device;
    if (device.read64 !== undefined) {
      device.read64(offset, halves);
      return;
    }
    halves[0] = device.read(offset, 4);
    halves[1] = device.read(offset + 4, 4);
  }

  /** An 8-byte write of `low` and `high` (each 0..2^32-1). */
  write64(addr: number, low: number, high: number): void {
    const r = this.find(addr, 8);
    if (r === null) {
      this.counts[this.unassignedWrites]++;
      return;
    }
    this.counts[r.writeSlot]++;
    const offset = addr - r.base;
    const device = r.device;
    if (device.write64 !== undefined) {
      device.write64(offset, low, high);
      return;
    }
    device.write(offset, 4, low);
    device.write(offset + 4, 4, high);
  }

  ownerOf(addr: number): string | null {
    return this.find(addr, 1)?.device.name ?? null;
  }
}
