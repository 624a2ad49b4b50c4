// USB Mass Storage Bulk-Only Transport 1.0: the CBW / data / CSW state machine on a bulk IN
// and a bulk OUT endpoint, in front of a SCSI logical unit. Runs on the machine thread.
//
// The device layer queues transfers per endpoint and offers the head of each queue; the head
// completes once the transport can serve it. The SCSI command behind a data phase streams
// asynchronously: reads are fetched ahead of the host, and writes are taken from the host
// while earlier ones are still going to the backend. Everything the host sends is checked: a CBW that is not valid (31 bytes with the
// signature) halts both endpoints until a Bulk-Only Mass Storage Reset (spec 6.6.1).
//
// The thirteen cases (spec 6.7) where host and device disagree about the data phase:
// - host expects none, device would move data (2, 3): the command is not run, CSW phase error;
// - host expects to receive, device sends less or nothing (4, 5): the rest is zero padding,
//   residue = host length - data sent; device would send more (7): the host's length is sent,
//   then phase error; device would receive (8): bulk IN halts, then phase error;
// - host sends, device takes less or nothing (9, 11): the rest is accepted and dropped,
//   residue = host length - data taken; device would take more (13): the host's bytes go to
//   the command, then phase error; device would send (10): bulk OUT halts, then phase error.
import { transferLength, type UsbTransfer } from '../usb-device';
import { STATUS_GOOD, type ScsiCommand, type ScsiDisk } from './scsi';

export const CBW_SIGNATURE = 0x43425355;
export const CSW_SIGNATURE = 0x53425355;
export const CBW_LENGTH = 31;
export const CSW_LENGTH = 13;
export const CSW_PASSED = 0;
export const CSW_FAILED = 1;
export const CSW_PHASE_ERROR = 2;

/** Bytes of read data fetched ahead of the host, and bytes of write data held for the backend. */
const READ_AHEAD = 1 << 20;
const WRITE_BEHIND = 1 << 20;

type Phase = 'cbw' | 'data-in' | 'data-out' | 'status' | 'csw';

/** What the transport needs of the USB device whose bulk endpoints it serves (UsbDeviceBase). */
export interface BotEndpoints {
  /**
   * Completes a transfer at the head of its endpoint's queue: a byte count (status 'ok'; IN
   * bytes are already in transfer.data) or 'stall' (the endpoint halts). False when that
   * transfer is no longer the head (it was cancelled or drained meanwhile).
   */
  complete(transfer: UsbTransfer, result: number | 'stall'): boolean;
  /** Halts the bulk IN or OUT endpoint: queued and new transfers STALL until the halt is cleared. */
  halt(inEndpoint: boolean): void;
}

export class BulkOnlyTransport {
  private phase: Phase = 'cbw';
  /** Bumped by a reset: completions of backend work started before it are ignored. */
  private generation = 0;
  /** The transfer at the head of each endpoint's queue, as offered by the device. */
  private headIn: UsbTransfer | null = null;
  private headOut: UsbTransfer | null = null;
  private pumping = false;
  /** Backend operations (reads, writes, finishes) not yet completed, of any generation. */
  private backendBusy = 0;
  private again = false;
  /** An invalid CBW keeps both endpoints halted until a Bulk-Only Mass Storage Reset. */
  private locked = false;

  // The command in progress.
  private tag = 0;
  private hostLength = 0;
  private command: ScsiCommand | null = null;
  /** Bytes of the data phase that belong to the command (min of the device's and the host's). */
  private deviceLength = 0;
  private phaseError = false;
  private finishing = false;
  /** The CSW status once known. */
  private status: number | null = null;
  /** Bytes moved over the bus in the data phase (padding and dropped bytes included). */
  private moved = 0;
  /** Bytes of command data moved (what the residue is computed from). */
  private dataMoved = 0;

  // Data-in: chunks fetched from the command and not yet sent.
  private fetched = 0;
  private fetching = false;
  private fetchFailed = false;
  private chunks: Uint8Array[] = [];
  private chunkOffset = 0;

  // Data-out: host bytes taken and not yet handed to the command.
  private pendingWrites: Uint8Array[] = [];
  private pendingBytes = 0;
  private writing = 0;
  private writeFailed = false;

  constructor(private readonly disk: ScsiDisk, private readonly endpoints: BotEndpoints) {}

  /** The head transfer of the bulk IN (`transfer.in`) or OUT queue; it completes through `endpoints`. */
  offer(transfer: UsbTransfer): void {
    if (transfer.in) this.headIn = transfer;
    else this.headOut = transfer;
    this.pump();
  }

  /** A transfer offered earlier was cancelled or drained. */
  forget(transfer: UsbTransfer): void {
    if (this.headIn === transfer) this.headIn = null;
    if (this.headOut === transfer) this.headOut = null;
  }

  /**
   * Bulk-Only Mass Storage Reset (class request 0xff): ready for a CBW again. Endpoint halts
   * stay (spec 3.1) but may be cleared from now on.
   */
  massStorageReset(): void {
    this.generation++;
    this.locked = false;
    this.startCbwPhase();
    this.pump();
  }

  /** A bus reset, a configuration change or an unplug: the device layer has dropped every transfer. */
  busReset(): void {
    this.headIn = null;
    this.headOut = null;
    this.massStorageReset();
    this.disk.resetSense();
  }

  /** After CLEAR_FEATURE(ENDPOINT_HALT): the halt comes straight back while an invalid CBW is unanswered. */
  haltCleared(inEndpoint: boolean): void {
    if (this.locked) this.halt(inEndpoint);
  }

  private halt(inEndpoint: boolean): void {
    if (inEndpoint) this.headIn = null;
    else this.headOut = null;
    this.endpoints.halt(inEndpoint);
  }

  /** Completes a head transfer and forgets it. */
  private complete(transfer: UsbTransfer, result: number | 'stall'): void {
    this.forget(transfer);
    this.again = true;
    this.endpoints.complete(transfer, result);
  }

  /** The head of an endpoint if it is still waiting (a drained transfer is no longer 'pending'). */
  private head(inEndpoint: boolean): UsbTransfer | null {
    const t = inEndpoint ? this.headIn : this.headOut;
    if (t && t.status !== 'pending') {
      this.forget(t);
      return null;
    }
    return t;
  }

  /** Runs the state machine until it can do nothing more; re-entrant calls just ask for another round. */
  private pump(): void {
    if (this.pumping) {
      this.again = true;
      return;
    }
    this.pumping = true;
    try {
      do {
        this.again = false;
        this.step();
      } while (this.again);
    } finally {
      this.pumping = false;
    }
  }

  private step(): void {
    switch (this.phase) {
      case 'cbw': {
        // Backend work of a command dropped by a reset finishes first, so that a new command
        // never overtakes it (a read of a block whose old write is still on its way).
        if (this.backendBusy > 0) return;
        const head = this.head(false);
        if (head) this.takeCbw(head);
        return;
      }
      case 'data-in':
        this.stepDataIn();
        return;
      case 'data-out':
        this.stepDataOut();
        return;
      case 'status':
        return;
      case 'csw': {
        const head = this.head(true);
        if (head) this.sendCsw(head);
        return;
      }
    }
  }

  /** Counts a backend completion; true when it belongs to a command a reset dropped. */
  private settled(generation: number): boolean {
    this.backendBusy--;
    if (generation === this.generation) return false;
    if (this.backendBusy === 0) this.pump(); // a CBW may be waiting
    return true;
  }

  private startCbwPhase(): void {
    this.phase = 'cbw';
    this.command = null;
    this.tag = 0;
    this.hostLength = 0;
    this.deviceLength = 0;
    this.phaseError = false;
    this.finishing = false;
    this.status = null;
    this.moved = 0;
    this.dataMoved = 0;
    this.fetched = 0;
    this.fetching = false;
    this.fetchFailed = false;
    this.chunks = [];
    this.chunkOffset = 0;
    this.pendingWrites = [];
    this.pendingBytes = 0;
    this.writing = 0;
    this.writeFailed = false;
  }

  private takeCbw(transfer: UsbTransfer): void {
    this.again = true;
    const data = transfer.data;
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const valid = data.length === CBW_LENGTH && view.getUint32(0, true) === CBW_SIGNATURE;
    const cbLength = valid ? data[14] & 0x1f : 0;
    if (!valid || cbLength < 1 || cbLength > 16) {
      // Not a valid (or not a meaningful) CBW: halt both endpoints until reset recovery.
      this.locked = true;
      this.complete(transfer, 'stall');
      this.halt(true);
      return;
    }
    // Everything is read before the transfer completes: then its buffer is the controller's again.
    this.tag = view.getUint32(4, true);
    this.hostLength = view.getUint32(8, true);
    const hostIn = (data[12] & 0x80) !== 0;
    const lun = data[13] & 0x0f;
    const command = this.disk.command(data.subarray(15, 15 + cbLength), lun);
    this.command = command;
    const generation = this.generation;
    this.complete(transfer, CBW_LENGTH);

    if (this.hostLength === 0) {
      if (command.direction !== 'none') {
        this.refuse(null); // cases 2 and 3
        return;
      }
      this.phase = 'status';
      this.finishCommand(generation);
      return;
    }
    if (hostIn) {
      if (command.direction === 'out') {
        this.refuse(true); // case 8
        return;
      }
      this.deviceLength = Math.min(command.length, this.hostLength);
      this.phaseError = command.length > this.hostLength; // case 7
      this.phase = 'data-in';
      return;
    }
    if (command.direction === 'in') {
      this.refuse(false); // case 10
      return;
    }
    this.deviceLength = command.direction === 'out' ? Math.min(command.length, this.hostLength) : 0;
    this.phaseError = command.direction === 'out' && command.length > this.hostLength; // case 13
    this.phase = 'data-out';
  }

  /** The command is not run; the CSW says phase error, after a halt of the endpoint given. */
  private refuse(haltIn: boolean | null): void {
    this.command = null;
    if (haltIn !== null) this.halt(haltIn);
    this.status = CSW_PHASE_ERROR;
    this.phase = 'csw';
  }

  private finishCommand(generation: number): void {
    const command = this.command;
    if (!command || this.finishing) return;
    this.finishing = true;
    this.backendBusy++;
    command.finish((status) => {
      if (this.settled(generation)) return;
      this.status = this.phaseError ? CSW_PHASE_ERROR : status === STATUS_GOOD ? CSW_PASSED : CSW_FAILED;
      if (this.phase === 'status') this.phase = 'csw';
      this.pump();
    });
  }

  private stepDataIn(): void {
    const command = this.command!;
    const generation = this.generation;
    const buffered = this.fetched - this.dataMoved;
    const head = this.head(true);
    const want = head ? Math.min(transferLength(head), this.hostLength - this.moved) : 0;

    // A backend that reads inline reads straight into the transfer (guest memory, when the
    // controller passed it): no read-ahead, no chunks, no copies.
    if (command.readInto && buffered === 0 && !this.fetching && !this.fetchFailed && this.fetched < this.deviceLength) {
      if (!head) return;
      const targets = targetsOf(head);
      const dataWanted = Math.min(want, this.deviceLength - this.dataMoved);
      this.backendBusy++;
      const ok = command.readInto(firstBytes(targets, dataWanted));
      this.backendBusy--;
      if (ok) {
        this.fetched += dataWanted;
        this.dataMoved += dataWanted;
        fillSegments(targets, dataWanted, want);
      } else {
        this.fetchFailed = true; // the rest of the data phase is padding
        fillSegments(targets, 0, want);
      }
      this.moved += want;
      if (this.moved >= this.hostLength) this.phase = this.status === null ? 'status' : 'csw';
      this.complete(head, want);
      if ((this.fetchFailed || this.fetched >= this.deviceLength) && !this.finishing) this.finishCommand(generation);
      return;
    }

    // Fetch ahead: enough for the transfer waiting, and up to READ_AHEAD beyond what was sent.
    if (!command.readInto && !this.fetching && !this.fetchFailed && this.fetched < this.deviceLength && buffered < Math.max(want, READ_AHEAD)) {
      const n = Math.min(this.deviceLength - this.fetched, Math.max(want, READ_AHEAD) - buffered);
      this.fetching = true;
      this.again = true;
      this.backendBusy++;
      command.read(n, (data) => {
        if (this.settled(generation)) return;
        this.fetching = false;
        if (!data || data.length === 0) {
          this.fetchFailed = true; // the rest of the data phase is padding
        } else {
          const chunk = data.length > n ? data.subarray(0, n) : data;
          this.chunks.push(chunk);
          this.fetched += chunk.length;
        }
        this.pump();
      });
      return;
    }

    if (!this.fetching && (this.fetchFailed || this.fetched >= this.deviceLength) && !this.finishing) {
      this.again = true;
      this.finishCommand(generation);
      return;
    }

    if (!head) return;
    const dataEnd = this.fetchFailed ? this.fetched : this.deviceLength;
    const dataWanted = Math.max(0, Math.min(want, dataEnd - this.dataMoved));
    if (this.fetched - this.dataMoved < dataWanted) return; // still fetching
    const targets = targetsOf(head);
    this.copyChunks(targets, dataWanted);
    fillSegments(targets, dataWanted, want);
    this.dataMoved += dataWanted;
    this.moved += want;
    if (this.moved >= this.hostLength) this.phase = this.status === null ? 'status' : 'csw';
    this.complete(head, want);
  }

  private copyChunks(targets: readonly Uint8Array[], length: number): void {
    let at = 0;
    while (at < length) {
      const chunk = this.chunks[0];
      const n = Math.min(length - at, chunk.length - this.chunkOffset);
      copyIntoSegments(targets, at, chunk.subarray(this.chunkOffset, this.chunkOffset + n));
      at += n;
      this.chunkOffset += n;
      if (this.chunkOffset >= chunk.length) {
        this.chunks.shift();
        this.chunkOffset = 0;
      }
    }
  }

  private stepDataOut(): void {
    const command = this.command!;
    const generation = this.generation;
    const head = this.head(false);
    if (head && this.moved < this.hostLength && this.pendingBytes + this.writing < WRITE_BEHIND) {
      const length = transferLength(head);
      const sources = targetsOf(head);
      const take = Math.min(length, this.hostLength - this.moved);
      const forCommand = Math.max(0, Math.min(take, this.deviceLength - this.dataMoved));
      if (forCommand > 0 && !this.writeFailed) {
        if (command.writeFrom && this.pendingBytes === 0 && this.writing === 0) {
          // Inline, straight from the transfer (guest memory): done before it completes.
          this.backendBusy++;
          if (!command.writeFrom(firstBytes(sources, forCommand))) this.writeFailed = true;
          this.backendBusy--;
        } else {
          // Kept past the transfer's completion, when its buffer is the guest's again: a copy.
          this.pendingWrites.push(concat(firstBytes(sources, forCommand), forCommand));
          this.pendingBytes += forCommand;
        }
      }
      this.dataMoved += forCommand;
      this.moved += take;
      this.complete(head, length);
      return;
    }
    if (this.writing === 0 && this.pendingBytes > 0) {
      const data = this.pendingWrites.length === 1 ? this.pendingWrites[0] : concat(this.pendingWrites, this.pendingBytes);
      this.pendingWrites = [];
      this.writing = this.pendingBytes;
      this.pendingBytes = 0;
      this.again = true;
      this.backendBusy++;
      command.write(data, (ok) => {
        if (this.settled(generation)) return;
        this.writing = 0;
        if (!ok) {
          this.writeFailed = true;
          this.pendingWrites = [];
          this.pendingBytes = 0;
        }
        this.pump();
      });
      return;
    }
    if (this.moved >= this.hostLength && this.writing === 0 && this.pendingBytes === 0) {
      this.phase = this.status === null ? 'status' : 'csw';
      this.again = true;
      this.finishCommand(generation);
    }
  }

  private sendCsw(transfer: UsbTransfer): void {
    this.again = true;
    if (transferLength(transfer) < CSW_LENGTH) {
      // No room for the CSW: halt, and keep it for the host's next try.
      this.complete(transfer, 'stall');
      return;
    }
    const csw = new Uint8Array(CSW_LENGTH);
    const view = new DataView(csw.buffer);
    view.setUint32(0, CSW_SIGNATURE, true);
    view.setUint32(4, this.tag, true);
    view.setUint32(8, this.hostLength - this.dataMoved, true);
    csw[12] = this.status ?? CSW_PHASE_ERROR;
    copyIntoSegments(targetsOf(transfer), 0, csw);
    this.startCbwPhase();
    this.complete(transfer, CSW_LENGTH);
  }
}

function concat(parts: readonly Uint8Array[], length: number): Uint8Array {
  const out = new Uint8Array(length);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Where a transfer's bytes are: the guest memory segments the controller passed, or its data. */
function targetsOf(t: UsbTransfer): readonly Uint8Array[] {
  return t.guest ?? [t.data];
}

/** The segments' first `n` bytes, as segments (the list itself when it holds no more). */
function firstBytes(segments: readonly Uint8Array[], n: number): readonly Uint8Array[] {
  let total = 0;
  for (let i = 0; i < segments.length; i++) total += segments[i].length;
  if (total <= n) return segments;
  const out: Uint8Array[] = [];
  for (const s of segments) {
    if (n <= 0) break;
    out.push(s.length <= n ? s : s.subarray(0, n));
    n -= s.length;
  }
  return out;
}

/** Copies `bytes` into the segments from byte `at` of their concatenation. */
function copyIntoSegments(segments: readonly Uint8Array[], at: number, bytes: Uint8Array): void {
  let from = 0;
  for (const s of segments) {
    if (from >= bytes.length) return;
    if (at >= s.length) {
      at -= s.length;
      continue;
    }
    const n = Math.min(s.length - at, bytes.length - from);
    s.set(bytes.subarray(from, from + n), at);
    from += n;
    at = 0;
  }
}

/** Zeroes bytes [from, to) of the segments' concatenation. */
function fillSegments(segments: readonly Uint8Array[], from: number, to: number): void {
  let base = 0;
  for (const s of segments) {
    const start = Math.max(from - base, 0);
    const end = Math.min(to - base, s.length);
    if (start < end) s.fill(0, start, end);
    base += s.length;
    if (base >= to) return;
  }
}
