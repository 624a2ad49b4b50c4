// A NIC model's end of its network backend (machine thread): frames from the VM host wait
// here until the model has a guest buffer for them, and frames the guest sends go to the VM
// host within the transmit credit (shared/net-messages.ts). Nothing is dropped silently: a
// frame the model cannot take is counted by the model, and the credit goes back either way.
import {
  decodeNetCount, encodeNetCount, NET_FRAME_OFFSET, NET_KIND, NET_RX_WINDOW, NET_TX_WINDOW, netFrameRecord,
} from '../../shared/net-messages';

export interface NicLinkIo {
  /**
   * Sends a record to the VM host's network side; false when the channel is full. The payload
   * is copied before this returns (as Channel.send does): the link reuses its buffer.
   */
  send(kind: number, payload: Uint8Array): boolean;
  setTimer(delayMs: number, fn: () => void): () => void;
}

/** Frames beyond this many waiting (the host overran its window, e.g. across a reset) are dropped. */
const RX_QUEUE_LIMIT = 2 * NET_RX_WINDOW;
const RETRY_MS = 1;
/** The transmit record's first size: an MTU-1500 frame with a VLAN tag (bigger frames grow it). */
const SCRATCH_FRAME_BYTES = 1518;

export class NicLink {
  private readonly rx: Uint8Array[] = [];
  private rxCreditOwed = 0;
  private txCredit = NET_TX_WINDOW;
  /** The record every transmitted frame is written into (transmitRecord); made at the first. */
  private scratch: Uint8Array | null = null;
  /** A frame the channel refused; it goes first when there is room. */
  private stalled: Uint8Array | null = null;
  private retry: (() => void) | null = null;
  /** Called when frames arrive (the model fills guest buffers) and when transmit credit returns. */
  onReceive: () => void = () => {};
  onTransmitReady: () => void = () => {};
  /** Frames dropped here because the queue overflowed. */
  overflowDrops = 0;

  constructor(readonly nic: number, private readonly io: NicLinkIo) {}

  /** Tells the VM host this NIC (re)started: it forgets the old one's unacknowledged frames. */
  hello(): void {
    this.helloSent = this.io.send(NET_KIND.HELLO, encodeNetCount(this.nic, NET_RX_WINDOW));
    if (!this.helloSent) this.later();
  }
  private helloSent = false;

  /** A record from the VM host for this NIC. */
  onRecord(kind: number, body: Uint8Array): void {
    if (kind === NET_KIND.FRAME) {
      if (this.rx.length >= RX_QUEUE_LIMIT) {
        this.overflowDrops++;
        this.credit(1);
        this.flush();
        return;
      }
      // The channel hands each record over as a copy of its own: kept as it is.
      this.rx.push(body);
      this.onReceive();
      this.flush();
    } else if (kind === NET_KIND.TX_CREDIT) {
      this.txCredit = Math.min(NET_TX_WINDOW, this.txCredit + decodeNetCount(body));
      this.flushStalled();
      if (this.canTransmit) this.onTransmitReady();
    }
  }

  get waiting(): number {
    return this.rx.length;
  }

  /** The next received frame, without taking it. */
  peek(): Uint8Array | undefined {
    return this.rx[0];
  }

  /** Takes the next received frame (the model put it in the guest or counted its drop). */
  take(): Uint8Array | undefined {
    const frame = this.rx.shift();
    if (frame) this.credit(1);
    return frame;
  }

  /** Drops every waiting frame (the NIC was reset or is not running); returns how many. */
  discardAll(): number {
    const n = this.rx.length;
    this.rx.length = 0;
    if (n > 0) this.credit(n);
    return n;
  }

  get canTransmit(): boolean {
    return this.txCredit > 0 && this.stalled === null;
  }

  /** Sends a guest frame to the VM host (call only while canTransmit). */
  transmit(frame: Uint8Array): void {
    const record = this.transmitRecord(frame.length);
    record.set(frame, NET_FRAME_OFFSET);
    this.send(record);
  }

  /**
   * A record for a guest frame of `length` bytes: the model writes the frame into it at
   * NET_FRAME_OFFSET (straight from guest memory, no copy of its own) and passes it to send().
   */
  transmitRecord(length: number): Uint8Array {
    // One buffer for every frame: the channel copies a record as it takes it.
    if (this.scratch === null || this.scratch.length < NET_FRAME_OFFSET + length) this.scratch = netFrameRecord(this.nic, Math.max(length, SCRATCH_FRAME_BYTES));
    return this.scratch.subarray(0, NET_FRAME_OFFSET + length);
  }

  /** Sends a record from transmitRecord, its frame written (call only while canTransmit). */
  send(record: Uint8Array): void {
    this.txCredit--;
    if (!this.io.send(NET_KIND.TX_FRAME, record)) {
      this.stalled = record.slice(); // the scratch buffer is the next frame's
      this.later();
    }
  }

  /** Receive credits go back at the end of a batch of frames (flush: one record, not one per frame). */
  private credit(n: number): void {
    this.rxCreditOwed += n;
  }

  /** Sends the receive credit owed (the model calls it after a batch of take/discardAll). */
  flush(): void {
    if (this.rxCreditOwed === 0) return;
    if (this.io.send(NET_KIND.RX_CREDIT, encodeNetCount(this.nic, this.rxCreditOwed))) this.rxCreditOwed = 0;
    else this.later();
  }

  private flushStalled(): void {
    if (this.stalled && this.io.send(NET_KIND.TX_FRAME, this.stalled)) this.stalled = null;
  }

  /** The channel was full: try again shortly (the VM host drains it meanwhile). */
  private later(): void {
    if (this.retry) return;
    this.retry = this.io.setTimer(RETRY_MS, () => {
      this.retry = null;
      if (!this.helloSent) this.hello();
      this.flush();
      const wasStalled = this.stalled !== null;
      this.flushStalled();
      if (this.stalled) this.later();
      else if (wasStalled && this.canTransmit) this.onTransmitReady();
    });
  }

  /** The machine is going away: no more timers. */
  close(): void {
    this.retry?.();
    this.retry = null;
  }
}
