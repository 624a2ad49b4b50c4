// Shared vm-stats subscriptions: however many views watch one VM at one pace (the library's
// sparkline, the Performance tab), the API carries one stream. Type-only imports, so unit
// tests load this file on its own.
import type { PortholeApi, VmStatsSample } from '../../main/api/contract';

export type SampleListener = (sample: VmStatsSample) => void;

interface Feed {
  listeners: Set<SampleListener>;
  /** Resolves to the stream's stop function, or null when it could not be opened. */
  stop: Promise<(() => void) | null>;
}

export class StatsFeeds {
  private readonly feeds = new Map<string, Feed>();

  constructor(
    private readonly api: Pick<PortholeApi, 'watchVmStatsEvery'>,
    private readonly onError: (vmId: string, error: unknown) => void = () => undefined,
  ) {}

  /** Open streams (one per VM and pace with listeners). */
  get openCount(): number {
    return this.feeds.size;
  }

  /** Calls `listener` with each sample of VM `vmId`, one per `intervalMs`, until the returned function is called. */
  subscribe(vmId: string, intervalMs: number, listener: SampleListener): () => void {
    const key = `${vmId}@${intervalMs}`;
    let feed = this.feeds.get(key);
    if (!feed) {
      const listeners = new Set<SampleListener>();
      const stop = this.api
        .watchVmStatsEvery(vmId, intervalMs, (event) => {
          for (const l of [...listeners]) l(event.sample);
        })
        .catch((e: unknown) => {
          this.onError(vmId, e);
          return null;
        });
      feed = { listeners, stop };
      this.feeds.set(key, feed);
    }
    const own = feed;
    // A wrapper per call, so one function subscribed twice is two listeners.
    const entry: SampleListener = (s) => listener(s);
    own.listeners.add(entry);
    return () => {
      if (!own.listeners.delete(entry) || own.listeners.size > 0) return;
      if (this.feeds.get(key) === own) this.feeds.delete(key);
      void own.stop.then((stop) => stop?.());
    };
  }
}

/** The sum of a sample's VM exit rates: what a library sparkline draws. */
export function exitsPerSecond(sample: VmStatsSample): number {
  let sum = 0;
  for (const c of sample.counters) if (c.group === 'exits') sum += c.perSecond;
  return sum;
}
