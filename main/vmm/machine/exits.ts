// Decodes one KVM exit from a kvm_run page and dispatches it to the buses.
// Runs on the machine thread for vCPU 0 and for every AP (whose run pages are shared).
// Imported from the module itself, not the native/ index: re-exports are getters,
// and these constants are read on every exit.
import { type CoalescedRing, EXIT, EXIT_NAMES, RUN } from '../../../native/kvm';
import type { MmioBus, PioBus } from '../devices/bus';
import { privateStatistics } from '../devices/io-device';
import type { StatsRegistry } from '../shared/stats';

/** Counter names of KVM exit reasons (group 'exits'); others are counted as exit_<n>. */
export const EXIT_REASON_NAMES: Readonly<Record<number, string>> = {
  2: 'io', 6: 'mmio', 10: 'intr', 5: 'hlt', 8: 'shutdown', 24: 'system_event', 17: 'internal_error', 9: 'fail_entry',
};
const EXIT_SLOTS = 64;

/** What the run loop should do after an exit. */
export const ACTION = { CONTINUE: 0, RESET: 1, POWEROFF: 2, ERROR: 3 } as const;
export type Action = (typeof ACTION)[keyof typeof ACTION];

export class ExitDispatcher {
  /** The registry's counts, and the counter slot of each exit reason (-1: not registered yet). */
  private readonly counts: Uint32Array;
  private readonly exitSlots = new Int32Array(EXIT_SLOTS).fill(-1);
  /** Scratch for 8-byte MMIO reads (low, high), so none allocates. */
  private readonly halves = new Uint32Array(2);
  /** Set by devices (reset register, ACPI S5) during an access. */
  pendingAction: Action = ACTION.CONTINUE;
  errorMessage = '';
  /** What asked for the pending reset, for the VM's log (a guest that resets by itself). */
  resetCause = '';
  /** Writes KVM queued instead of exiting (e.g. to PCI's 0xcf8); null when none are. */
  coalesced: CoalescedRing | null = null;
  private readonly applyCoalesced = (isPio: boolean, address: number, length: number, value: number, high: number): void => {
    if (isPio) this.pio.write(address, length, value);
    else if (length === 8) this.mmio.write64(address, value, high);
    else this.mmio.write(address, length, value);
  };

  constructor(
    private readonly pio: PioBus, private readonly mmio: MmioBus,
    readonly statistics: StatsRegistry = privateStatistics(),
  ) {
    this.counts = statistics.counts;
    // The common reasons get their slots now, so the schema a launch posts already has them.
    for (const reason of [2, 6, 10, 5, 8]) this.exitSlot(reason);
  }

  /** The counter slot of exits with `reason` (registered on first use: an unusual exit is rare). */
  private exitSlot(reason: number): number {
    const known = reason < EXIT_SLOTS ? this.exitSlots[reason] : -1;
    if (known >= 0) return known;
    const slot = this.statistics.counter('exits', EXIT_REASON_NAMES[reason] ?? `exit_${reason}`);
    if (reason < EXIT_SLOTS) this.exitSlots[reason] = slot;
    return slot;
  }

  /**
   * Applies queued (coalesced) writes; they happened before whatever exit comes next.
   * Returns the action one of them asked for (a reset through 0xcf9), else CONTINUE.
   */
  drainCoalesced(): Action {
    if (this.coalesced === null || !this.coalesced.pending()) return ACTION.CONTINUE;
    this.applyQueuedWrites();
    const action = this.pendingAction;
    if (action !== ACTION.CONTINUE && action !== ACTION.ERROR) this.pendingAction = ACTION.CONTINUE;
    return action;
  }

  /**
   * Applies queued writes now, for a device about to change state that those writes may have
   * changed first (they happened before it). An action one of them asks for stays pending.
   */
  applyQueuedWrites(): void {
    const ring = this.coalesced;
    if (ring !== null && ring.pending()) ring.drain(this.applyCoalesced);
  }

  requestReset(cause = 'a reset register (i8042, port 0x92 or 0xcf9)'): void {
    if (this.pendingAction !== ACTION.CONTINUE) return;
    this.pendingAction = ACTION.RESET;
    this.resetCause = cause;
  }
  requestPowerOff(): void {
    if (this.pendingAction !== ACTION.ERROR) this.pendingAction = ACTION.POWEROFF;
  }
  fail(message: string): void {
    this.pendingAction = ACTION.ERROR;
    this.errorMessage = message;
  }

  handle(run: DataView, bytes: Uint8Array, cpu: number): Action {
    // A queued write that resets or stops the machine wins over this later exit.
    if (this.coalesced !== null) {
      const earlier = this.drainCoalesced();
      if (earlier !== ACTION.CONTINUE) return earlier;
    }
    const reason = run.getUint32(RUN.EXIT_REASON, true);
    const slot = reason < EXIT_SLOTS ? this.exitSlots[reason] : -1;
    // A plain increment: every exit is dispatched on the machine thread (see devices/bus.ts).
    this.counts[slot >= 0 ? slot : this.exitSlot(reason)]++;
    switch (reason) {
      case EXIT.IO:
        this.handleIo(run, bytes);
        break;
      case EXIT.MMIO:
        this.handleMmio(run, bytes);
        break;
      case EXIT.INTR:
        break;
      case EXIT.SHUTDOWN:
        // Triple fault: a PC resets.
        this.requestReset(`a triple fault on vCPU ${cpu}`);
        break;
      case EXIT.SYSTEM_EVENT: {
        const type = run.getUint32(RUN.SYSTEM_EVENT_TYPE, true);
        if (type === 1) this.requestPowerOff();
        else if (type === 2) this.requestReset(`KVM's reset system event on vCPU ${cpu}`);
        else this.fail(`vCPU ${cpu}: system event ${type}`);
        break;
      }
      case EXIT.HLT:
        this.fail(`vCPU ${cpu}: halted with no in-kernel irqchip to wake it`);
        break;
      case EXIT.INTERNAL_ERROR:
        this.fail(`vCPU ${cpu}: KVM internal error, suberror ${run.getUint32(RUN.INTERNAL_SUBERROR, true)}`);
        break;
      case EXIT.FAIL_ENTRY:
        this.fail(`vCPU ${cpu}: KVM failed to enter the guest (hardware reason 0x${run.getBigUint64(RUN.FAIL_ENTRY_REASON, true).toString(16)})`);
        break;
      default:
        this.fail(`vCPU ${cpu}: unhandled exit ${EXIT_NAMES[reason] ?? reason}`);
    }
    const action = this.pendingAction;
    if (action !== ACTION.CONTINUE && action !== ACTION.ERROR) this.pendingAction = ACTION.CONTINUE;
    return action;
  }

  private handleIo(run: DataView, bytes: Uint8Array): void {
    const out = bytes[RUN.IO_DIRECTION] === 1;
    const size = bytes[RUN.IO_SIZE];
    const port = run.getUint16(RUN.IO_PORT, true);
    const count = run.getUint32(RUN.IO_COUNT, true);
    let o = run.getUint32(RUN.IO_DATA_OFFSET, true);
    // KVM bounds data_offset + count*size inside the run area; check anyway.
    if (o + count * size > bytes.length || (size !== 1 && size !== 2 && size !== 4)) {
      this.fail(`bad PIO exit: port 0x${port.toString(16)} size ${size} count ${count}`);
      return;
    }
    if (count === 1 && size === 1) {
      // The common case (one byte, e.g. a UART or POST port) without the loop.
      if (out) this.pio.write(port, 1, bytes[o]);
      else bytes[o] = this.pio.read(port, 1);
      return;
    }
    for (let i = 0; i < count; i++, o += size) {
      if (out) {
        const v = size === 1 ? bytes[o] : size === 2 ? run.getUint16(o, true) : run.getUint32(o, true);
        this.pio.write(port, size, v);
      } else {
        const v = this.pio.read(port, size);
        if (size === 1) bytes[o] = v;
        else if (size === 2) run.setUint16(o, v, true);
        else run.setUint32(o, v >>> 0, true);
      }
    }
  }

  /**
   * Data bytes go between the run page and the bus as numbers: 1, 2 and 4 bytes as one
   * access, 8 bytes as two 32-bit halves (MmioBus.read64/write64), other lengths (an odd
   * instruction the emulator split) one byte at a time.
   */
  private handleMmio(run: DataView, bytes: Uint8Array): void {
    const addr = run.getUint32(RUN.MMIO_PHYS_ADDR, true) + run.getUint32(RUN.MMIO_PHYS_ADDR + 4, true) * 0x100000000;
    const len = run.getUint32(RUN.MMIO_LEN, true);
    const d = RUN.MMIO_DATA;
    const mmio = this.mmio;
    if (bytes[RUN.MMIO_IS_WRITE]) {
      if (len === 4) mmio.write(addr, 4, run.getUint32(d, true));
      else if (len === 1) mmio.write(addr, 1, bytes[d]);
      else if (len === 2) mmio.write(addr, 2, run.getUint16(d, true));
      else if (len === 8) mmio.write64(addr, run.getUint32(d, true), run.getUint32(d + 4, true));
      else if (len > 0 && len < 8) for (let i = 0; i < len; i++) mmio.write(addr + i, 1, bytes[d + i]);
      else this.fail(`bad MMIO exit: length ${len} at 0x${addr.toString(16)}`);
      return;
    }
    if (len === 4) run.setUint32(d, mmio.read(addr, 4) >>> 0, true);
    else if (len === 1) bytes[d] = mmio.read(addr, 1);
    else if (len === 2) run.setUint16(d, mmio.read(addr, 2), true);
    else if (len === 8) {
      const halves = this.halves;
      mmio.read64(addr, halves);
      run.setUint32(d, halves[0], true);
      run.setUint32(d + 4, halves[1], true);
    } else if (len > 0 && len < 8) for (let i = 0; i < len; i++) bytes[d + i] = mmio.read(addr + i, 1);
    else this.fail(`bad MMIO exit: length ${len} at 0x${addr.toString(16)}`);
  }
}
