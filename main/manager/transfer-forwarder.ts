// In the VM process: the manager's wish for USB transfer records, turned into a record-only
// capture on the VM host (no file) while wanted, and its records sent on in batches. A batch
// holds at most TRANSFER_BATCH_MAX records; the rest are counted as dropped (a UI list
// cannot show a stick's thousands of transfers a second anyway, the pcapng file can).
import type { UsbTransferRecord } from '../api/contract';
import type { UsbCaptureSpec, UsbCaptureSummary } from '../vmm/host/usb-capture';

export const TRANSFER_BATCH_MS = 100;
export const TRANSFER_BATCH_MAX = 500;

export interface TransferSource {
  startUsbCapture(spec: UsbCaptureSpec, listener?: (record: UsbTransferRecord) => void): Promise<UsbCaptureSummary>;
  stopUsbCapture(id: number): Promise<UsbCaptureSummary>;
}

export class TransferForwarder {
  private wanted = false;
  private source: TransferSource | null = null;
  private capture: number | null = null;
  private busy = false;
  private batch: UsbTransferRecord[] = [];
  private dropped = 0;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly send: (records: UsbTransferRecord[], dropped: number) => void,
    private readonly log: (line: string) => void = () => {},
  ) {}

  /** The VM host runs (a machine exists to capture from). */
  setSource(source: TransferSource | null): void {
    this.source = source;
    if (source === null) this.capture = null;
    void this.sync();
  }

  setStreaming(on: boolean): void {
    this.wanted = on;
    void this.sync();
  }

  private async sync(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      while (this.source !== null && this.wanted !== (this.capture !== null)) {
        const source = this.source;
        if (this.wanted) {
          try {
            this.capture = (await source.startUsbCapture({ path: null }, (r) => this.offer(r))).id;
          } catch (e) {
            // No USB controller, or the machine is going: nothing to stream.
            this.log(`USB transfer stream: ${(e as Error).message}`);
            return;
          }
        } else {
          const id = this.capture as number;
          this.capture = null;
          await source.stopUsbCapture(id).catch(() => undefined);
          this.flush();
        }
      }
    } finally {
      this.busy = false;
    }
  }

  private offer(record: UsbTransferRecord): void {
    if (this.batch.length >= TRANSFER_BATCH_MAX) this.dropped++;
    else this.batch.push(record);
    if (this.timer === null) this.timer = setTimeout(() => this.flush(), TRANSFER_BATCH_MS);
  }

  flush(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.batch.length === 0 && this.dropped === 0) return;
    const records = this.batch;
    const dropped = this.dropped;
    this.batch = [];
    this.dropped = 0;
    this.send(records, dropped);
  }
}
