// Data buffers of big TDs, reused. A fresh 1 MiB Uint8Array per TD costs an allocation and a
// zeroed page per 4 KiB at its first write: 2.5-3 ms a MiB in the rig's L1, against 0.5 ms to
// write a reused one (measured 2026-11-29), and V8 frees the old ones only later. TDs that
// carry their own bytes (passthrough's URBs read and write them in place) take one from here
// and give it back once the device has completed it and the controller has scattered it. A
// TD the controller drops (stop, reset, unplug) never gives its buffer back.

/** TDs from this size take a pooled buffer; smaller ones are cheap to make. */
export const POOLED_TD_BYTES = 64 * 1024;
/** Free buffers kept, in bytes (a few 1 MiB TDs in flight on a couple of endpoints). */
export const TD_POOL_BYTES = 8 * 1024 * 1024;

/** The buffer size class of a TD of `length` bytes: the next power of two, from POOLED_TD_BYTES. */
export function tdBufferCapacity(length: number): number {
  let capacity = POOLED_TD_BYTES;
  while (capacity < length) capacity *= 2;
  return capacity;
}

export class TdBufferPool {
  private readonly free = new Map<number, ArrayBuffer[]>();
  private freeBytes = 0;
  /** Views this pool handed out and has not had back: give() takes nothing else, nor anything twice. */
  private readonly lent = new WeakSet<Uint8Array>();

  /** A view of `length` bytes over a reused buffer (its old bytes stay: IN data is scattered only up to what the device moved). */
  take(length: number): Uint8Array {
    const capacity = tdBufferCapacity(length);
    const buffer = this.free.get(capacity)?.pop();
    if (buffer !== undefined) this.freeBytes -= capacity;
    const view = new Uint8Array(buffer ?? new ArrayBuffer(capacity), 0, length);
    this.lent.add(view);
    return view;
  }

  /** Takes back a view from take(); anything else is left to the garbage collector. */
  give(view: Uint8Array): void {
    if (!this.lent.delete(view)) return;
    const capacity = view.buffer.byteLength;
    if (this.freeBytes + capacity > TD_POOL_BYTES) return;
    let list = this.free.get(capacity);
    if (list === undefined) this.free.set(capacity, (list = []));
    list.push(view.buffer as ArrayBuffer);
    this.freeBytes += capacity;
  }

  /** Free bytes held (for tests). */
  get held(): number {
    return this.freeBytes;
  }
}
