// State shared between the VM host thread, the machine thread (vCPU 0 + devices)
// and the AP threads, all in SharedArrayBuffers so no message is needed on hot paths.
import { libc, RUN } from '../../../native';
import { MAX_CPUS } from '../config';
import type { Doorbell } from './channel';

export const COMMAND = { RUN: 0, PAUSE: 1, STOP: 2 } as const;
export const STATE = { STARTING: 0, RUNNING: 1, PAUSED: 2, STOPPED: 3 } as const;

const CTRL_COMMAND = 0;
const CTRL_STATE = 1;
const CTRL_AP_PENDING = 2;
const CTRL_TIDS = 8;
const CTRL_MAILBOX = CTRL_TIDS + MAX_CPUS;
const CTRL_WORDS = CTRL_MAILBOX + MAX_CPUS;
/** Byte offset of a Float64 after the words: the machine's earliest timer deadline. */
const CTRL_DEADLINE_BYTE = Math.ceil((CTRL_WORDS * 4) / 8) * 8;

/** Milliseconds on the monotonic clock, comparable across threads. */
export function monotonicMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

/**
 * Wall-clock milliseconds with sub-millisecond resolution, comparable across threads and
 * processes on one machine (for start-up timings that another process lines up).
 */
export function epochMs(): number {
  return performance.timeOrigin + performance.now();
}

/** A start-up milestone, stamped once per machine launch (never on a hot path). */
export interface StartupTiming {
  label: string;
  epochMs: number;
}

export const MAILBOX = { IDLE: 0, REQUEST: 1, DONE: 2, CANCELLED: 3 } as const;

/** The control block: command, state, vCPU thread ids and AP exit mailboxes. */
export class ControlBlock {
  readonly words: Int32Array;
  private readonly deadline: Float64Array;
  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(CTRL_DEADLINE_BYTE + 8)) {
    this.words = new Int32Array(buffer, 0, CTRL_WORDS);
    this.deadline = new Float64Array(buffer, CTRL_DEADLINE_BYTE, 1);
  }
  /**
   * The machine thread's earliest timer deadline (monotonicMs), 0 if none. Its timers can
   * only fire when vCPU 0 leaves KVM_RUN, so the VM host kicks it once this has passed.
   */
  get timerDeadline(): number { return this.deadline[0]; }
  set timerDeadline(ms: number) { this.deadline[0] = ms; }
  get command(): number { return Atomics.load(this.words, CTRL_COMMAND); }
  setCommand(c: number): void {
    Atomics.store(this.words, CTRL_COMMAND, c);
    Atomics.notify(this.words, CTRL_COMMAND);
  }
  /** Blocks the calling (worker) thread while the command is `c`. */
  waitWhileCommand(c: number, timeoutMs = 1000): void {
    Atomics.wait(this.words, CTRL_COMMAND, c, timeoutMs);
  }
  get state(): number { return Atomics.load(this.words, CTRL_STATE); }
  setState(s: number): void { Atomics.store(this.words, CTRL_STATE, s); }
  setTid(cpu: number, tid: number): void { Atomics.store(this.words, CTRL_TIDS + cpu, tid); }
  tid(cpu: number): number { return Atomics.load(this.words, CTRL_TIDS + cpu); }
  get apPending(): number { return Atomics.load(this.words, CTRL_AP_PENDING); }

  /**
   * AP side: post an exit to the machine thread and block until it is handled.
   * `kickBsp` must set vCPU 0's immediate_exit as well as signal it: the signal alone
   * is lost if the machine thread is between KVM_RUN calls, and vCPU 0 may then halt.
   */
  postApExit(cpu: number, kickBsp: () => void): number {
    Atomics.store(this.words, CTRL_MAILBOX + cpu, MAILBOX.REQUEST);
    Atomics.add(this.words, CTRL_AP_PENDING, 1);
    kickBsp();
    for (;;) {
      const v = Atomics.load(this.words, CTRL_MAILBOX + cpu);
      if (v !== MAILBOX.REQUEST) {
        Atomics.store(this.words, CTRL_MAILBOX + cpu, MAILBOX.IDLE);
        return v;
      }
      // The machine may have finished its last look at the mailboxes before this request
      // arrived: once it is stopping, withdraw the request instead of waiting forever.
      if (Atomics.load(this.words, CTRL_COMMAND) === COMMAND.STOP &&
          Atomics.compareExchange(this.words, CTRL_MAILBOX + cpu, MAILBOX.REQUEST, MAILBOX.IDLE) === MAILBOX.REQUEST) {
        Atomics.sub(this.words, CTRL_AP_PENDING, 1);
        return MAILBOX.CANCELLED;
      }
      Atomics.wait(this.words, CTRL_MAILBOX + cpu, MAILBOX.REQUEST, 100);
    }
  }
  mailbox(cpu: number): number { return Atomics.load(this.words, CTRL_MAILBOX + cpu); }
  completeApExit(cpu: number, result: number): void {
    Atomics.sub(this.words, CTRL_AP_PENDING, 1);
    Atomics.store(this.words, CTRL_MAILBOX + cpu, result);
    Atomics.notify(this.words, CTRL_MAILBOX + cpu);
  }
}

const pid = libc.getpid();
export function kickThread(tid: number): void {
  try {
    libc.tgkill(pid, tid, libc.SIG_KICK);
  } catch {
    // The thread left between the check and the signal; nothing to interrupt.
  }
}

/** Knocks a vCPU out of KVM_RUN: immediate_exit covers the window before it enters. */
export function kickVcpu(runBuffer: SharedArrayBuffer, runOffset: number, tid: number): void {
  new Uint8Array(runBuffer, runOffset + RUN.IMMEDIATE_EXIT, 1)[0] = 1;
  if (tid !== 0) kickThread(tid);
}

/**
 * A single-producer single-consumer byte ring in shared memory. The guest side never
 * blocks: when the ring is full the device reports "transmitter busy" and the guest waits.
 * With a doorbell, a push that makes the ring non-empty rings it (the consumer may be
 * asleep); the consumer re-checks `used` after a drain, as Channel explains, so a push
 * racing with the drain is never left unseen.
 */
export class ByteRing {
  private readonly header: Int32Array;
  private readonly data: Uint8Array;
  readonly capacity: number;
  constructor(
    readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(8 + 65536),
    private readonly doorbell: Doorbell | null = null,
  ) {
    this.header = new Int32Array(buffer, 0, 2);
    this.data = new Uint8Array(buffer, 8);
    this.capacity = this.data.length;
  }
  get used(): number {
    return (Atomics.load(this.header, 0) - Atomics.load(this.header, 1)) | 0;
  }
  get free(): number { return this.capacity - this.used; }
  push(byte: number): boolean {
    const head = Atomics.load(this.header, 0);
    if (((head - Atomics.load(this.header, 1)) | 0) >= this.capacity) return false;
    this.data[(head >>> 0) % this.capacity] = byte;
    Atomics.store(this.header, 0, (head + 1) | 0);
    if (this.doorbell !== null && Atomics.load(this.header, 1) === head) this.doorbell.ring();
    return true;
  }
  /** Takes everything available (consumer side). */
  drain(): Uint8Array {
    const head = Atomics.load(this.header, 0);
    const tail = Atomics.load(this.header, 1);
    const n = (head - tail) | 0;
    if (n === 0) return new Uint8Array(0);
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.data[((tail + i) >>> 0) % this.capacity];
    Atomics.store(this.header, 1, head);
    return out;
  }
}
