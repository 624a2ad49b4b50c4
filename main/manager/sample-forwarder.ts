// The VM process's side of the vm-stats stream: passes the VM host's samples on to the
// manager only while the manager asked for them, no closer together than
// STATS_MIN_INTERVAL_MS (less STATS_TIMER_SLACK_MS).
import type { StatsSample } from '../vmm/shared/stats';
import { STATS_MIN_INTERVAL_MS, STATS_TIMER_SLACK_MS } from './vm-process-protocol';

export class SampleForwarder {
  private on = false;
  private lastSentAt = -Infinity;

  constructor(private readonly send: (sample: StatsSample) => void) {}

  /** The manager's wish (a "stats-stream" message). */
  setStreaming(on: boolean): void {
    this.on = on;
  }

  /** A sample from the VM host; `nowMs` is the monotonic time it arrived. */
  offer(sample: StatsSample, nowMs: number): void {
    // Less a little timer jitter: a 100 ms sampling timer may fire 99.x ms after the last.
    if (!this.on || nowMs - this.lastSentAt < STATS_MIN_INTERVAL_MS - STATS_TIMER_SLACK_MS) return;
    this.lastSentAt = nowMs;
    this.send(sample);
  }
}
