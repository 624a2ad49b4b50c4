// The typed channel between the VM host thread and the machine thread: one direction
// per Channel, a single producer and a single consumer, records in a SharedArrayBuffer.
//
// A record is a target (who handles it: a device, a backend), a kind (what it is to that
// target) and a byte payload. The ring is bounded: send() returns false when a record
// does not fit, and the producer may wait for room (waitForSpace), so nothing is lost.
//
// Waking without polling. The producer notifies only on the empty→non-empty transition:
// after publishing a record it re-reads the consumer's position, and if the consumer had
// taken everything before it, it notifies the head word (and calls `onWake`, which the
// VM host uses to kick vCPU 0 out of KVM_RUN). The consumer stores its position before
// it waits on the head word with the head it saw, so one of the two always sees the
// other's store (both are sequentially consistent atomics): no wake-up is lost.
//
// Layout: Int32 words HEAD, TAIL, WANT_SPACE, then the data ring. Positions count bytes
// and wrap at 2^32; the capacity is a power of two so that wrap is continuous. Records
// are 8-byte aligned, so a record's 8-byte header never straddles the ring's end.

// Atomics.waitAsync (V8, Node 16+) is missing from this project's TypeScript lib.
type WaitAsyncResult =
  | { async: false; value: 'not-equal' | 'timed-out' }
  | { async: true; value: Promise<'ok' | 'timed-out'> };
const waitAsync = (Atomics as unknown as {
  waitAsync(array: Int32Array, index: number, value: number, timeoutMs?: number): WaitAsyncResult;
}).waitAsync.bind(Atomics);

const HEAD = 0;
const TAIL = 1;
const WANT_SPACE = 2;
const HEADER_BYTES = 16;
const RECORD_HEADER_BYTES = 8;
/** Payloads up to this size are copied byte by byte. */
const SMALL_PAYLOAD = 64;

/** Largest target or kind number (each is 16 bits in the record header). */
export const CHANNEL_MAX_TAG = 0xffff;

export type ChannelHandler = (target: number, kind: number, payload: Uint8Array) => void;

/** Bytes of ring a record with `payloadBytes` of payload takes. */
export function recordBytes(payloadBytes: number): number {
  return RECORD_HEADER_BYTES + ((payloadBytes + 7) & ~7);
}

export class Channel {
  readonly buffer: SharedArrayBuffer;
  readonly capacity: number;
  private readonly words: Int32Array;
  private readonly data: Uint8Array;
  private readonly dataWords: Uint32Array;
  /** Producer side: called after a send that made the ring non-empty (the consumer may be asleep). */
  onWake: (() => void) | null = null;

  /** A new channel with `capacity` bytes of ring (a power of two, at least 64). */
  static create(capacity = 65536): Channel {
    if (capacity < 64 || (capacity & (capacity - 1)) !== 0 || capacity > 1 << 30) {
      throw new RangeError(`channel capacity ${capacity} is not a power of two between 64 and 2^30`);
    }
    return new Channel(new SharedArrayBuffer(HEADER_BYTES + capacity));
  }

  /** Opens a channel made elsewhere (the other thread's end). */
  constructor(buffer: SharedArrayBuffer) {
    this.buffer = buffer;
    this.capacity = buffer.byteLength - HEADER_BYTES;
    if (this.capacity < 64 || (this.capacity & (this.capacity - 1)) !== 0) {
      throw new RangeError(`a channel buffer of ${buffer.byteLength} bytes has no power-of-two ring`);
    }
    this.words = new Int32Array(buffer, 0, HEADER_BYTES / 4);
    this.data = new Uint8Array(buffer, HEADER_BYTES);
    this.dataWords = new Uint32Array(buffer, HEADER_BYTES);
  }

  /** Bytes of records waiting for the consumer. */
  get used(): number {
    return (Atomics.load(this.words, HEAD) - Atomics.load(this.words, TAIL)) >>> 0;
  }

  get empty(): boolean {
    return Atomics.load(this.words, HEAD) === Atomics.load(this.words, TAIL);
  }

  // --- producer ---------------------------------------------------------------------

  /**
   * Appends one record. Returns false, having written nothing, when the ring lacks room
   * (back-pressure: keep the record and call waitForSpace). A payload that could never
   * fit is a programming error and throws.
   */
  send(target: number, kind: number, payload: Uint8Array = EMPTY): boolean {
    if (target >>> 0 !== target || target > CHANNEL_MAX_TAG || kind >>> 0 !== kind || kind > CHANNEL_MAX_TAG) {
      throw new RangeError(`channel target ${target} / kind ${kind} out of range`);
    }
    const size = recordBytes(payload.length);
    if (size > this.capacity) throw new RangeError(`a ${payload.length}-byte record does not fit a ${this.capacity}-byte channel`);
    const head = Atomics.load(this.words, HEAD);
    const used = (head - Atomics.load(this.words, TAIL)) >>> 0;
    if (used + size > this.capacity) return false;
    const at = (head >>> 0) & (this.capacity - 1);
    this.dataWords[at >>> 2] = target | (kind << 16);
    this.dataWords[(at >>> 2) + 1] = payload.length;
    const start = (at + RECORD_HEADER_BYTES) & (this.capacity - 1);
    const mask = this.capacity - 1;
    if (payload.length <= SMALL_PAYLOAD) {
      // Small payloads: a byte loop is cheaper than making subarrays.
      for (let i = 0; i < payload.length; i++) this.data[(start + i) & mask] = payload[i];
    } else {
      const first = Math.min(payload.length, this.capacity - start);
      this.data.set(payload.subarray(0, first), start);
      if (first < payload.length) this.data.set(payload.subarray(first), 0);
    }
    Atomics.store(this.words, HEAD, (head + size) | 0);
    // The consumer had taken everything before this record: it may be asleep.
    if (Atomics.load(this.words, TAIL) === head) {
      Atomics.notify(this.words, HEAD);
      this.onWake?.();
    }
    return true;
  }

  /**
   * Resolves once a record of `payloadBytes` fits, or the consumer took something since
   * (the caller tries send again). Only the producer clears WANT_SPACE: were the consumer
   * to clear it, a request set just before that clear, whose wait began after it, would
   * never be notified.
   */
  waitForSpace(payloadBytes: number): Promise<void> {
    const size = recordBytes(payloadBytes);
    Atomics.store(this.words, WANT_SPACE, 1);
    const tail = Atomics.load(this.words, TAIL);
    if (((Atomics.load(this.words, HEAD) - tail) >>> 0) + size <= this.capacity) return this.spaceFound();
    const r = waitAsync(this.words, TAIL, tail);
    return r.async ? r.value.then(() => this.spaceFound()) : this.spaceFound();
  }

  private spaceFound(): Promise<void> {
    Atomics.store(this.words, WANT_SPACE, 0);
    return Promise.resolve();
  }

  // --- consumer ---------------------------------------------------------------------

  /**
   * Hands every waiting record to `handler`, in order, and returns how many. Each payload
   * is a copy the handler may keep. Records are released one by one before their handler
   * runs, so a handler that throws loses only its own record. It returns only after it saw
   * the ring empty following its last release, so no record is left without a wake-up.
   */
  receive(handler: ChannelHandler): number {
    let tail = Atomics.load(this.words, TAIL);
    let count = 0;
    for (;;) {
      // Re-read after our last release: a record sent before that store is seen here, and
      // one sent after it found the ring empty and woke us (see the top of this file).
      const head = Atomics.load(this.words, HEAD);
      if (tail === head) return count;
      while (tail !== head) {
        const at = (tail >>> 0) & (this.capacity - 1);
        const tag = this.dataWords[at >>> 2];
        const length = this.dataWords[(at >>> 2) + 1];
        const size = recordBytes(length);
        if (length > this.capacity - RECORD_HEADER_BYTES || size > ((head - tail) >>> 0)) {
          throw new Error(`channel record at ${tail >>> 0} is corrupt (${length} bytes)`);
        }
        const start = (at + RECORD_HEADER_BYTES) & (this.capacity - 1);
        const payload = new Uint8Array(length);
        if (length <= SMALL_PAYLOAD) {
          const mask = this.capacity - 1;
          for (let i = 0; i < length; i++) payload[i] = this.data[(start + i) & mask];
        } else {
          const first = Math.min(length, this.capacity - start);
          payload.set(this.data.subarray(start, start + first));
          if (first < length) payload.set(this.data.subarray(0, length - first), first);
        }
        tail = (tail + size) | 0;
        this.release(tail);
        count++;
        handler(tag & 0xffff, tag >>> 16, payload);
      }
    }
  }

  /** Stores our position; a producer waiting for room (WANT_SPACE set, cleared by it alone) is notified. */
  private release(tail: number): void {
    Atomics.store(this.words, TAIL, tail);
    if (Atomics.load(this.words, WANT_SPACE) !== 0) Atomics.notify(this.words, TAIL);
  }

  /**
   * Resolves when a record is waiting (at once if one is). Only the consumer calls it:
   * it relies on the consumer's own position being current.
   */
  waitForData(): Promise<void> {
    const head = Atomics.load(this.words, HEAD);
    if (head !== Atomics.load(this.words, TAIL)) return Promise.resolve();
    const r = waitAsync(this.words, HEAD, head);
    return r.async ? r.value.then(() => undefined) : Promise.resolve();
  }
}

const EMPTY = new Uint8Array(0);

/**
 * One shared word that several producers ring to wake one consumer (the VM host waits
 * on it for the serial rings, the machine→host channel and timer deadline changes).
 * The consumer reads `value` before it looks at its sources, and waits for it to change
 * afterwards; a producer rings after publishing. A ring between the look and the wait
 * changes the value, so the wait returns at once.
 */
export class Doorbell {
  private readonly word: Int32Array;
  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(4), byteOffset = 0) {
    this.word = new Int32Array(buffer, byteOffset, 1);
  }
  get value(): number {
    return Atomics.load(this.word, 0);
  }
  ring(): void {
    Atomics.add(this.word, 0, 1);
    Atomics.notify(this.word, 0);
  }
  /** Resolves once the value differs from `seen` (at once if it already does). */
  wait(seen: number): Promise<void> {
    const r = waitAsync(this.word, 0, seen);
    return r.async ? r.value.then(() => undefined) : Promise.resolve();
  }
}

/**
 * Targets both threads agree on. A COM port's UART is target `SERIAL + port` (0..3) in
 * both directions; device models and backends added later take targets from FIRST_FREE.
 */
export const CHANNEL_TARGET = { SERIAL: 0, FIRST_FREE: 16 } as const;
