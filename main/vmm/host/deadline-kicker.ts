// The VM host's side of machine timers: one real timer, armed for the earliest deadline
// the machine thread published, that kicks vCPU 0 out of KVM_RUN when it is due. The
// VM host calls update() whenever the machine rang its doorbell, so no polling is needed.
import { monotonicMs } from '../shared/control';

/** While a deadline is overdue (kicked, not yet run and re-published), kick again this often. */
const OVERDUE_RECHECK_MS = 2;

export class DeadlineKicker {
  private armed = 0;
  private timer: NodeJS.Timeout | null = null;

  /** `deadline` reads the published deadline (monotonicMs, 0 for none); `kick` knocks vCPU 0 out. */
  constructor(private readonly deadline: () => number, private readonly kick: () => void) {}

  /** Re-arms for the published deadline if it changed. */
  update(): void {
    const deadline = this.deadline();
    if (deadline === this.armed) return;
    this.stop();
    this.armed = deadline;
    if (deadline !== 0) this.arm(deadline - monotonicMs());
  }

  /** Forgets the deadline (the machine ended or is replaced). */
  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.armed = 0;
  }

  private arm(delayMs: number): void {
    this.timer = setTimeout(() => this.onTimer(), Math.max(0, delayMs));
    this.timer.unref();
  }

  private onTimer(): void {
    this.timer = null;
    const deadline = this.deadline();
    // A new deadline (or none) is out: the doorbell brings it to update().
    if (deadline !== this.armed || deadline === 0) {
      this.update();
      return;
    }
    const left = deadline - monotonicMs();
    if (left <= 0) this.kick();
    // The machine runs the timer and publishes its next deadline; until then, look again.
    this.arm(left > 0 ? left : OVERDUE_RECHECK_MS);
  }
}
