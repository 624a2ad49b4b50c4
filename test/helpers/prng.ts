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
