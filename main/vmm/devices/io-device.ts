// What a register block is, with no dependencies of its own, so the buses, the PCI bus and
// the device models all build on it without import circles (device.ts re-exports it).
// See device.ts for how 8-byte MMIO accesses reach a block.
import { type CounterUnit, StatsRegistry } from '../shared/stats';

export interface IoDevice {
  /** Shown in statistics and errors; also the counter group of its bus accesses. */
  readonly name: string;
  /** `offset` is relative to the registered base; `size` is 1, 2 or 4. */
  read(offset: number, size: number): number;
  write(offset: number, size: number, value: number): void;
  /** An 8-byte MMIO read as one access: fills halves[0] (low) and halves[1] (high). */
  read64?(offset: number, halves: Uint32Array): void;
  /** An 8-byte MMIO write as one access, as its low and high 32-bit halves. */
  write64?(offset: number, low: number, high: number): void;
}

/**
 * One counter of a device, bound to its registry slot. A device counts on the thread it
 * lives on (the machine thread), the counter's only writer, so add() is a plain store (a
 * locked Atomics.add costs ~25 ns); counters several threads bump use StatsRegistry.add.
 */
export class Counter {
  private readonly counts: Uint32Array;
  constructor(registry: StatsRegistry, readonly slot: number) {
    this.counts = registry.counts;
  }
  add(n = 1): void {
    this.counts[this.slot] += n;
  }
  /** The raw 32-bit count (it wraps; the VM host's sampler makes totals of it). */
  get value(): number {
    return Atomics.load(this.counts, this.slot);
  }
}

export function counter(registry: StatsRegistry, group: string, name: string, unit: CounterUnit = 'count'): Counter {
  return new Counter(registry, registry.counter(group, name, unit));
}

/** A small registry of its own, for a device built outside a machine (unit tests, tools). */
export function privateStatistics(): StatsRegistry {
  return new StatsRegistry(new SharedArrayBuffer(256 * 4));
}

/** All ones of `size` bytes: what an access nothing decodes reads. */
export function allOnes(size: number): number {
  return size >= 4 ? 0xffffffff : size === 2 ? 0xffff : 0xff;
}
