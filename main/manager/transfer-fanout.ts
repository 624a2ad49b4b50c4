// The USB transfer fan-out: who watches which VM's `usb-transfers` events, and the VM
// processes' batches handed to them. A VM process only captures and sends records while its
// VM has a watcher: `onDemand(id, wanted)` tells the manager when the first comes or the last goes.
import type { UsbTransferRecord, UsbTransfersEvent } from '../api/contract';

type Watcher = (event: UsbTransfersEvent) => void;

export class TransferFanout {
  private readonly watchers = new Map<string, Set<Watcher>>();

  constructor(
    private readonly onDemand: (id: string, wanted: boolean) => void,
    private readonly diag: (line: string) => void,
  ) {}

  /** Whether anybody watches VM `id` (a new run of it turns its stream on). */
  wanted(id: string): boolean {
    return (this.watchers.get(id)?.size ?? 0) > 0;
  }

  watch(id: string, watcher: Watcher): () => void {
    let set = this.watchers.get(id);
    if (!set) {
      set = new Set();
      this.watchers.set(id, set);
    }
    const own = set;
    const entry: Watcher = (e) => watcher(e);
    own.add(entry);
    if (own.size === 1) this.onDemand(id, true);
    return () => {
      if (!own.delete(entry)) return;
      if (own.size === 0 && this.watchers.get(id) === own) {
        this.watchers.delete(id);
        this.onDemand(id, false);
      }
    };
  }

  publish(id: string, records: UsbTransferRecord[], dropped: number): void {
    const set = this.watchers.get(id);
    if (!set) return;
    const event: UsbTransfersEvent = { type: 'usb-transfers', id, records, dropped };
    for (const w of [...set]) {
      try {
        w(event);
      } catch (e) {
        this.diag(`usb-transfers watcher failed: ${(e as Error).message}`);
      }
    }
  }

  forget(id: string): void {
    if (this.watchers.delete(id)) this.onDemand(id, false);
  }
}
