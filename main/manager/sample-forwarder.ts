// The VM process's side of the vm-stats stream: keeps the VM host's latest sample (the
// "stats" command answers it without a kick) and passes samples on to the manager only
// while the manager asked for them, no closer together than STATS_MIN_INTERVAL_MS (less
// STATS_TIMER_SLACK_MS).
import type { StatsSample } from '../vmm/shared/stats';
import { STATS_MIN_INTERVAL_MS, STATS_TIMER_SLACK_MS } from './vm-process-protocol';

export class SampleForwarder {
  private latestSample: StatsSample | null = null;
  private on = false;
  private lastSentAt = -Infinity;

  constructor(private readonly send: (sample: StatsSample) => void) {}

  /** The latest sample, when the registry has counters (else the machine must be asked). */
  get latestWithCounters(): StatsSample | null {
    return this.latestSample && this.latestSample.counters.length > 0 ? this.latestSample : null;
  }

  /** The manager's wish (a "stats-stream" message). */
  setStreaming(on: boolean): void {
    this.on = on;
  }

  /** A sample from the VM host; `nowMs` is the monotonic time it arrived. */
  offer(sample: StatsSample, nowMs: number): void {
    this.latestSample = sample;
    // Less a little timer jitter: a 100 ms sampling timer may fire 99.x ms after the last.
    if (!this.on || nowMs - this.lastSentAt < STATS_MIN_INTERVAL_MS - STATS_TIMER_SLACK_MS) return;
    this.lastSentAt = nowMs;
    this.send(sample);
  }
}
