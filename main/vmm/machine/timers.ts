// Device timers of the machine thread. The thread sits inside KVM_RUN most of the time,
// where its event loop's timers cannot run: the earliest deadline is published (when it
// changes) so that the VM host can kick vCPU 0 then, and the run loop calls runDue()
// each time vCPU 0 leaves KVM_RUN. An event-loop timer backs each one up for the times
// the thread is in its event loop anyway (paused).
import { monotonicMs } from '../shared/control';

interface MachineTimer {
  deadline: number;
  fn: () => void;
  handle: NodeJS.Timeout;
}

export class MachineTimers {
  private readonly timers = new Set<MachineTimer>();
  private published = 0;

  /** `publish` gets the earliest deadline (monotonicMs, 0 for none) each time it changes. */
  constructor(private readonly publish: (deadline: number) => void) {}

  /** The earliest deadline, 0 if no timer is set. */
  get nextDeadline(): number {
    return this.published;
  }

  /** Runs `fn` after about `delayMs`; returns a function that cancels it. */
  set(delayMs: number, fn: () => void): () => void {
    const entry: MachineTimer = {
      deadline: monotonicMs() + delayMs, fn, handle: setTimeout(() => this.fire(entry), delayMs),
    };
    entry.handle.unref();
    this.timers.add(entry);
    this.update();
    return () => {
      if (!this.timers.delete(entry)) return;
      clearTimeout(entry.handle);
      this.update();
    };
  }

  /** Runs every timer that is due. Cheap when none is. */
  runDue(): void {
    if (this.published === 0 || monotonicMs() < this.published) return;
    const now = monotonicMs();
    for (const t of [...this.timers]) if (t.deadline <= now) this.fire(t);
  }

  /** Cancels every timer (the machine ended). */
  clear(): void {
    for (const t of this.timers) clearTimeout(t.handle);
    this.timers.clear();
    this.update();
  }

  private fire(entry: MachineTimer): void {
    if (!this.timers.delete(entry)) return;
    clearTimeout(entry.handle);
    this.update();
    entry.fn();
  }

  private update(): void {
    let earliest = 0;
    for (const t of this.timers) if (earliest === 0 || t.deadline < earliest) earliest = t.deadline;
    if (earliest === this.published) return;
    this.published = earliest;
    this.publish(earliest);
  }
}
