/** A small seeded PRNG (xorshift32) so fuzz tests are repeatable. */
export class Prng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0 || 0x9e3779b9;
  }
  next(): number {
    let x = this.state;
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    this.state = x;
    return x;
  }
  /** 0 <= n < max */
  below(max: number): number {
    return Math.floor((this.next() / 0x100000000) * max);
  }
  pick<T>(items: readonly T[]): T {
    return items[this.below(items.length)];
  }
}

/**
 * A fuzz test's case count: `ciCases` in a normal run, times PORTHOLE_FUZZ_SCALE for the
 * long runs of `npm run fuzz` (a whole number from 1).
 */
export function fuzzCases(ciCases: number): number {
  const scale = Number(process.env.PORTHOLE_FUZZ_SCALE ?? 1);
  return Number.isInteger(scale) && scale >= 1 ? ciCases * scale : ciCases;
}
