// The statistics registry: counters in one SharedArrayBuffer that every thread of a VM
// process increments (machine thread, AP workers, VM host backends) and the VM host
// samples without kicking a vCPU. The buffer is made once per VM and survives resets.
//
// Counters are 32-bit and wrap: increments are Atomics.add (no count is lost between
// threads, and no BigInt on the hot path). The sampler turns wrapped values into
// 64-bit-safe totals by adding each interval's delta modulo 2^32.

// Naming convention (group / name), so the UI, the CLI and tests agree:
//   exits        / io, mmio, hlt, intr, ... (KVM exit reasons, all vCPUs)
//   <device>     / pio-reads, pio-writes, mmio-reads, mmio-writes (bus accesses; device name as on the bus)
//   COM1..COM4   / tx-bytes, rx-bytes (bytes)
//   irq          / gsi-<n> (line assertions), msi (messages sent)
//   <device>     / msix-<vector> (MSI-X messages sent per vector)
//   <backend>    / read-bytes, write-bytes (bytes), reads, writes (operations)
//   usb<port>-<kind> / ep0-bytes, ep1-in-bytes, ep2-out-bytes... (bytes moved by completed
//                  transfers), ep<n>[-in|-out]-transfers (completed transfers),
//                  ep<n>[-in|-out]-latency-us (microseconds from submit to completion, summed:
//                  latency-us / transfers is the mean). The group is retired when the
//                  device is unplugged and comes back when one of its kind is plugged there again.

/** What a counter counts; the UI picks an axis and a unit from it. */
export type CounterUnit = 'count' | 'bytes';

export interface CounterSpec {
  /** Who counts: 'vcpu', 'exits', a device name ('COM1', 'i8042', 'pci-host'), a backend. */
  group: string;
  /** What is counted: 'io', 'mmio', 'pio-reads', 'tx-bytes', 'irq', ... */
  name: string;
  unit: CounterUnit;
  /** Its device is gone (unplugged): samples leave it out until it is registered again. */
  retired?: boolean;
}

/** Counter slots per VM; registering more throws (a programming error, not a guest's). */
export const STATS_CAPACITY = 4096;

export class StatsRegistry {
  readonly counts: Uint32Array;
  private readonly specs: CounterSpec[] = [];
  private readonly indexByKey = new Map<string, number>();
  private changes = 0;

  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(STATS_CAPACITY * 4)) {
    this.counts = new Uint32Array(buffer);
  }

  /**
   * The slot of counter group/name, made on first use. Registering the same key again
   * (a machine rebuilt after a reset) returns the same slot, so totals carry on.
   */
  counter(group: string, name: string, unit: CounterUnit = 'count'): number {
    const key = `${group}\u0000${name}`;
    const known = this.indexByKey.get(key);
    if (known !== undefined) {
      const spec = this.specs[known];
      if (spec.retired) {
        delete spec.retired;
        this.changes++;
      }
      return known;
    }
    const index = this.specs.length;
    if (index >= this.counts.length) throw new Error(`statistics registry is full (${this.counts.length} counters)`);
    this.specs.push({ group, name, unit });
    this.indexByKey.set(key, index);
    this.changes++;
    return index;
  }

  /** counter(), or -1 when the registry is full (for counters a guest's choices create). */
  tryCounter(group: string, name: string, unit: CounterUnit = 'count'): number {
    const key = `${group}\u0000${name}`;
    if (!this.indexByKey.has(key) && this.specs.length >= this.counts.length) return -1;
    return this.counter(group, name, unit);
  }

  /**
   * Leaves a group's counters out of samples from now on (a device was unplugged). Their
   * slots stay (a sampler on another thread may be reading them); registering one of them
   * again brings it back, its total carrying on.
   */
  retireGroup(group: string): void {
    for (const spec of this.specs) {
      if (spec.group === group && !spec.retired) {
        spec.retired = true;
        this.changes++;
      }
    }
  }

  /** Changes with every counter registered, retired or brought back: the schema to post again. */
  get version(): number {
    return this.changes;
  }

  /** Adds `n` (a non-negative integer below 2^32) to counter `index`, from any thread. */
  add(index: number, n = 1): void {
    Atomics.add(this.counts, index, n);
  }

  /** The counters registered so far, in slot order (sent to the sampler on another thread). */
  get schema(): CounterSpec[] {
    return this.specs.map((s) => ({ ...s }));
  }

  /** Adopts a schema registered elsewhere (a rebuilt machine keeps its slots). */
  adopt(schema: CounterSpec[]): void {
    for (const s of schema) {
      const index = this.counter(s.group, s.name, s.unit);
      if (s.retired) this.specs[index].retired = true;
    }
  }
}

/** One counter's reading in a sample. */
export interface CounterReading extends CounterSpec {
  /** Since the VM started (across resets). */
  total: number;
  /** Over the last interval, per second. */
  perSecond: number;
}

/** What the VM host streams several times a second (the API's `vm-stats` event). */
export interface StatsSample {
  /** Wall-clock milliseconds when the counters were read. */
  atMs: number;
  /** Milliseconds since the previous sample (0 for the first). */
  intervalMs: number;
  counters: CounterReading[];
}

/** Reads a registry's buffer from another thread and turns it into samples. */
export class StatsSampler {
  private readonly counts: Uint32Array;
  private last: Uint32Array;
  private totals: Float64Array;
  private lastAt = 0;
  private schema: CounterSpec[] = [];

  constructor(buffer: SharedArrayBuffer) {
    this.counts = new Uint32Array(buffer);
    this.last = new Uint32Array(this.counts.length);
    this.totals = new Float64Array(this.counts.length);
  }

  /** The counters' names, as the registry that owns the buffer registered them. */
  setSchema(schema: CounterSpec[]): void {
    this.schema = schema.map((s) => ({ ...s }));
  }

  sample(nowMs = Date.now()): StatsSample {
    const intervalMs = this.lastAt === 0 ? 0 : nowMs - this.lastAt;
    this.lastAt = nowMs;
    const counters: CounterReading[] = [];
    for (let i = 0; i < this.schema.length; i++) {
      const value = Atomics.load(this.counts, i);
      const delta = (value - this.last[i]) >>> 0;
      this.last[i] = value;
      this.totals[i] += delta;
      const spec = this.schema[i];
      // A retired counter keeps its total (its device may come back) but is not reported.
      if (spec.retired) continue;
      counters.push({
        group: spec.group, name: spec.name, unit: spec.unit, total: this.totals[i], perSecond: intervalMs > 0 ? (delta * 1000) / intervalMs : 0,
      });
    }
    return { atMs: nowMs, intervalMs, counters };
  }
}
