// The VM host's side of a host USB device passed through: it holds the device (node-usb,
// through HostUsbHandle), runs the transfers the machine's PassthroughDevice sends, and gives
// the device back to the host's kernel drivers when it leaves the VM.
// Runs on the VM host thread (the process's main thread), where node-usb's completions land.
//
// Taking: the journal entry is written first (naming every interface's driver), then each
// interface's kernel driver is detached and the interface claimed. Giving back: transfers are
// cancelled, interfaces released, the remembered drivers attached again (USBDEVFS_CONNECT, or
// a sysfs bind when that fails), the device closed and the journal entry removed.
//
// The guest's standard requests that change the device's state become the matching host calls,
// so the host's kernel keeps its view of the device right: SET_CONFIGURATION (interfaces
// released, configuration set, the new interfaces' drivers detached and claimed),
// SET_INTERFACE, CLEAR_FEATURE(ENDPOINT_HALT) and the port reset (a device reset). While one of
// those runs, later transfers wait. Isochronous transfers go to usbfs URBs (native/usbdevfs.ts
// behind HostUsbHandle.submitIso): node-usb 2.x has none.
import { epochMs } from '../shared/control';
import type { HostUsbDeviceInfo } from '../../host/usb-inventory';
import type { HostTransferStatus, HostUsbHandle } from '../../host/host-usb-handle';
import { sysfsBind, type TakenInterface, type UsbJournal } from '../../host/usb-journal';
import {
  decodeAddress, decodeData, decodeIdRecord, decodeSubmit, encodeAddressOnly, encodeData, encodeDone, PASSTHROUGH_CHUNK, PASSTHROUGH_KIND,
  PASSTHROUGH_MAX_TRANSFER, type SubmitRecord,
} from '../shared/usb-passthrough-messages';

export interface PassthroughHostLink {
  /** Sends a record to the machine (in order; the link keeps what does not fit yet). */
  send(kind: number, payload: Uint8Array): void;
  log(text: string): void;
  /** The host device is gone (unplugged from the host): the VM host unplugs it from the guest. Called once. */
  gone?(): void;
}

interface HostTransfer {
  record: SubmitRecord;
  /** Control: 8 SETUP bytes then the data stage. */
  buffer: Buffer;
  /** OUT bytes received so far. */
  received: number;
  started: boolean;
  cancel: (() => void) | null;
  /** performance.now() when its SUBMIT record arrived, and when libusb got it (0: not yet). */
  arrivedAt: number;
  submittedAt: number;
}

/** Where the VM host's time per transfer went (ms summed over `transfers`), for the log and the bench. */
export interface PassthroughTiming {
  transfers: number;
  /** SUBMIT record in → libusb submit: OUT data records and device-state calls waited for. */
  waitMs: number;
  /** libusb submit → its completion callback: the host's USB stack and the device. */
  hostMs: number;
}

const SETUP = 8;
/** Isochronous OUT packets completed to the guest ahead of the device (see startIso). */
export const ISO_OUT_AHEAD = 24;
/** Packets per isochronous OUT URB at most. */
export const ISO_URB_PACKETS = 32;

interface IsoOutEndpoint {
  /** Started TDs waiting for this turn's flush into one URB. */
  batch: HostTransfer[];
  flushScheduled: boolean;
  /** TDs on the host (in URBs), not yet completed to the guest, oldest first. */
  queued: HostTransfer[];
  /** TDs completed to the guest while their packets are still on the host. */
  early: Set<HostTransfer>;
}
/** One isochronous packet: up to 3 × 1024 bytes (high-bandwidth high speed); SuperSpeed bursts reach 48 KiB. */
const ISO_PACKET_MAX = 48 * 1024;

export class HostUsbPassthrough {
  private readonly transfers = new Map<number, HostTransfer>();
  private instance = 0;
  /** Drivers detached from interfaces, to give back (also in the journal). */
  private readonly taken: TakenInterface[] = [];
  private readonly claimed = new Set<number>();
  /** A device-state call (reset, SET_CONFIGURATION...) is running: new work waits here, in order. */
  private busy = false;
  private readonly waiting: (() => void)[] = [];
  private released = false;
  private goneReported = false;
  /** Transfers completed, for the log and tests. */
  completed = 0;
  /** Of the transfers that went to libusb and completed. */
  readonly timing: PassthroughTiming = { transfers: 0, waitMs: 0, hostMs: 0 };
  /** Isochronous URBs: submitted, completed, and completions by packet status (errno), for the log. */
  readonly iso = { submitted: 0, completed: 0, bytes: 0, statuses: new Map<string, number>(), lastDoneAt: 0 };
  private isoLogTimer: ReturnType<typeof setInterval> | null = null;
  private isoLogged = { submitted: 0, completed: 0 };
  private readonly isoOut = new Map<number, IsoOutEndpoint>();

  constructor(
    readonly info: HostUsbDeviceInfo,
    /** The handle number the machine's records carry. */
    readonly handle: number,
    private readonly usb: HostUsbHandle,
    private readonly link: PassthroughHostLink,
    private readonly journal: UsbJournal | null,
    private readonly vmName: string,
    private readonly sysfsRoot?: string,
  ) {}

  /** Detaches the kernel drivers of the active configuration's interfaces and claims them. Throws a sentence. */
  take(): void {
    try {
      this.takeInterfaces();
    } catch (e) {
      this.giveBackDrivers();
      throw new Error(`Host USB device ${this.info.sysfsName} could not be claimed: ${(e as Error).message}`);
    }
  }

  private takeInterfaces(): void {
    const config = this.usb.configurationValue();
    const numbers = this.usb.interfaceNumbers();
    const fresh: TakenInterface[] = [];
    for (const n of numbers) {
      if (this.claimed.has(n) || !this.usb.kernelDriverActive(n)) continue;
      const sysfsName = `${this.info.sysfsName}:${config}.${n}`;
      const driver = this.info.configuration === config ? this.info.interfaces.find((i) => i.number === n)?.driver : undefined;
      fresh.push({ sysfsName, number: n, driver: driver ?? 'unknown' });
    }
    // The journal first: a crash between here and the give-back still names every driver.
    if (fresh.length > 0) {
      this.taken.push(...fresh.filter((f) => !this.taken.some((t) => t.sysfsName === f.sysfsName)));
      this.writeJournal();
    }
    for (const f of fresh) this.usb.detachKernelDriver(f.number);
    for (const n of numbers) {
      if (this.claimed.has(n)) continue;
      this.usb.claimInterface(n);
      this.claimed.add(n);
    }
  }

  private writeJournal(): void {
    this.journal?.record({
      sysfsName: this.info.sysfsName, busNumber: this.info.busNumber, deviceAddress: this.info.deviceAddress,
      vendorId: this.info.vendorId, productId: this.info.productId, pid: process.pid, vm: this.vmName,
      takenAt: new Date().toISOString(), interfaces: this.taken.filter((t) => t.driver !== 'unknown'),
    });
  }

  /**
   * The device left the host (the VM host's list lost it): nothing is given back to a device
   * that is not there, and its journal entry goes, so the port path is free for what comes next.
   */
  markGone(): void {
    this.goneReported = true;
    this.taken.length = 0;
  }

  /** Transfers the host runs now. */
  get inFlight(): number {
    return this.transfers.size;
  }

  /** A record from the machine's PassthroughDevice with this handle. */
  onMachineRecord(kind: number, payload: Uint8Array): void {
    if (this.released) return;
    const address = decodeAddress(payload);
    if (address === null) return;
    if (address.instance !== this.instance) {
      // A machine relaunch made a new device object: what the old one had in flight is over.
      if (kind !== PASSTHROUGH_KIND.SUBMIT && kind !== PASSTHROUGH_KIND.RESET) return;
      this.cancelAll();
      this.instance = address.instance;
    }
    switch (kind) {
      case PASSTHROUGH_KIND.SUBMIT: {
        const r = decodeSubmit(payload);
        if (r === null) return;
        if (r.length > PASSTHROUGH_MAX_TRANSFER || this.transfers.has(r.id)) {
          this.finish(r, 'error', 0);
          return;
        }
        const control = r.type === 'control';
        const buffer = Buffer.alloc((control ? SETUP : 0) + r.length);
        if (control) buffer.set(r.setup, 0);
        const t: HostTransfer = { record: r, buffer, received: 0, started: false, cancel: null, arrivedAt: performance.now(), submittedAt: 0 };
        this.transfers.set(r.id, t);
        if (r.in || r.length === 0) this.whenIdle(() => this.start(t));
        return;
      }
      case PASSTHROUGH_KIND.DATA: {
        const r = decodeData(payload);
        const t = r === null ? undefined : this.transfers.get(r.id);
        if (r === null || t === undefined || t.record.in || t.started) return;
        const base = t.record.type === 'control' ? SETUP : 0;
        if (r.offset + r.bytes.length > t.record.length) return;
        t.buffer.set(r.bytes, base + r.offset);
        t.received += r.bytes.length;
        if (t.received >= t.record.length) this.whenIdle(() => this.start(t));
        return;
      }
      case PASSTHROUGH_KIND.CANCEL: {
        const r = decodeIdRecord(payload);
        const t = r === null ? undefined : this.transfers.get(r.id);
        if (t === undefined) return;
        // The machine already completed it: drop it here, and stop the host URB.
        this.transfers.delete(t.record.id);
        t.cancel?.();
        return;
      }
      case PASSTHROUGH_KIND.RESET: {
        this.cancelAll();
        const instance = this.instance;
        // The machine holds the URBs it submits itself until the reset is done.
        this.whenIdle(() => this.deviceCall('port reset', (done) => this.usb.reset(done), () => {
          this.link.send(PASSTHROUGH_KIND.RESET_DONE, encodeAddressOnly({ handle: this.handle, instance }));
        }));
        return;
      }
      case PASSTHROUGH_KIND.GONE:
        this.reportGone();
        return;
      case PASSTHROUGH_KIND.DETACHED:
        this.cancelAll();
        return;
    }
  }

  private whenIdle(fn: () => void): void {
    if (this.busy || this.waiting.length > 0) this.waiting.push(fn);
    else fn();
  }

  /** A device-state call: nothing else starts until it is done. */
  private deviceCall(what: string, call: (done: (e: Error | null) => void) => void, after?: (e: Error | null) => void): void {
    this.busy = true;
    let returned = false;
    call((e) => {
      if (returned) return;
      returned = true;
      if (e) this.link.log(`usb-host ${this.info.sysfsName}: ${what} failed: ${e.message}`);
      after?.(e);
      this.busy = false;
      while (!this.busy && this.waiting.length > 0) (this.waiting.shift() as () => void)();
    });
  }

  private start(t: HostTransfer): void {
    const r = t.record;
    if (this.released || this.transfers.get(r.id) !== t) return;
    t.started = true;
    if (r.type === 'isochronous') {
      this.startIso(t);
      return;
    }
    if (r.type === 'control') {
      const [type, request] = [r.setup[0], r.setup[1]];
      const value = r.setup[2] | r.setup[3] << 8;
      const index = r.setup[4] | r.setup[5] << 8;
      if (type === 0x00 && request === 0x09) {
        this.deviceCall('SET_CONFIGURATION', (done) => this.setConfiguration(value & 0xff, done), (e) => this.complete(t, e ? 'stall' : 'ok', 0));
        return;
      }
      if (type === 0x01 && request === 0x0b) {
        this.deviceCall('SET_INTERFACE', (done) => this.usb.setInterface(index & 0xff, value & 0xff, done), (e) => this.complete(t, e ? 'stall' : 'ok', 0));
        return;
      }
      if (type === 0x02 && request === 0x01 && value === 0) {
        this.deviceCall('CLEAR_FEATURE(ENDPOINT_HALT)', (done) => this.usb.clearHalt(index & 0xff, done), (e) => this.complete(t, e ? 'stall' : 'ok', 0));
        return;
      }
    }
    const address = r.type === 'control' ? 0 : (r.endpoint | (r.in ? 0x80 : 0));
    t.submittedAt = performance.now();
    t.cancel = this.usb.submit(address, r.type, t.buffer, (status, actual) => this.complete(t, status, actual));
  }

  /**
   * An isochronous TD is one service interval's packet. IN: one usbfs URB of one packet per TD,
   * completed when the device answers. OUT: the TDs that arrive together go out as one
   * multi-packet URB (one submit, one reap for many packets), and a TD completes to the guest
   * as soon as its packet is queued on the host while fewer than ISO_OUT_AHEAD completed packets
   * wait for the device, else when the device takes one (QEMU's usb-host completes OUT when
   * buffered too). Without that, each packet's completion waits for the whole round trip
   * (guest, machine, VM host, host kernel, device and back), and a guest that keeps ~16 packets
   * queued gets only 16 packets per round trip: in the rig (round trips of ~100 ms) a tenth of
   * real time, so snd-usb-audio's pointer stalled past ALSA's wait and aplay failed with EIO.
   * A packet the host then fails is not reported to the guest (it was already completed).
   */
  private startIso(t: HostTransfer): void {
    const r = t.record;
    if (this.usb.submitIso === undefined || r.length > ISO_PACKET_MAX) {
      this.complete(t, 'error', 0);
      return;
    }
    this.watchIso();
    if (!r.in) {
      const ep = this.isoOutEndpoint(r.endpoint);
      ep.batch.push(t);
      if (!ep.flushScheduled) {
        ep.flushScheduled = true;
        // After this drain of the channel: the TDs that came together share one URB.
        queueMicrotask(() => this.flushIsoOut(r.endpoint));
      }
      return;
    }
    const address = r.endpoint | 0x80;
    this.iso.submitted++;
    t.cancel = this.usb.submitIso(address, t.buffer, [r.length], (status, packets, data) => {
      const packet = packets[0];
      const actual = packet === undefined ? 0 : Math.min(packet.actual, r.length);
      this.noteIso(status, packet, actual);
      if (actual > 0) t.buffer.set(data.subarray(0, actual), 0);
      this.complete(t, status === 'ok' && packet !== undefined ? packet.status : status, actual);
    });
  }

  private noteIso(status: HostTransferStatus, packet: { status: HostTransferStatus; errno?: number } | undefined, actual: number): void {
    this.iso.completed++;
    this.iso.bytes += actual;
    this.iso.lastDoneAt = performance.now();
    const key = `${status}/${packet === undefined ? 'none' : `${packet.status}${packet.errno ? `(errno ${packet.errno})` : ''}`}`;
    this.iso.statuses.set(key, (this.iso.statuses.get(key) ?? 0) + 1);
  }

  private isoOutEndpoint(endpoint: number): IsoOutEndpoint {
    let ep = this.isoOut.get(endpoint);
    if (ep === undefined) {
      ep = { batch: [], flushScheduled: false, queued: [], early: new Set() };
      this.isoOut.set(endpoint, ep);
    }
    return ep;
  }

  /** Sends the OUT TDs that arrived together as URBs of up to ISO_URB_PACKETS packets. */
  private flushIsoOut(endpoint: number): void {
    const ep = this.isoOutEndpoint(endpoint);
    ep.flushScheduled = false;
    const submit = this.usb.submitIso;
    if (this.released || submit === undefined) return;
    while (ep.batch.length > 0) {
      const tds = ep.batch.splice(0, ISO_URB_PACKETS).filter((t) => this.transfers.get(t.record.id) === t);
      if (tds.length === 0) continue;
      const lengths = tds.map((t) => t.record.length);
      const buffer = new Uint8Array(lengths.reduce((a, b) => a + b, 0));
      let at = 0;
      for (const t of tds) {
        buffer.set(t.buffer.subarray(0, t.record.length), at);
        at += t.record.length;
      }
      ep.queued.push(...tds);
      this.iso.submitted += tds.length;
      const cancel = submit.call(this.usb, endpoint, buffer, lengths, (status, packets) => {
        tds.forEach((t, i) => {
          const packet = packets[i];
          const actual = packet === undefined ? 0 : Math.min(packet.actual, t.record.length);
          this.noteIso(status, packet, actual);
          if (ep.early.delete(t)) return; // completed to the guest already
          const k = ep.queued.indexOf(t);
          if (k < 0) return; // cancelled
          // Older TDs still queued (URBs reaped out of order) complete first: the guest retires in order.
          for (const older of ep.queued.splice(0, k)) {
            ep.early.add(older);
            this.complete(older, 'ok', older.record.length);
          }
          ep.queued.shift();
          this.complete(t, status === 'ok' && packet !== undefined ? packet.status : status, actual);
        });
        this.releaseIsoOut(ep);
      });
      // Cancelling one TD of the URB stops the URB: the guest stops a stream as a whole.
      for (const t of tds) t.cancel = cancel;
    }
    this.releaseIsoOut(ep);
  }

  /** Completes queued OUT TDs to the guest while fewer than ISO_OUT_AHEAD completed ones are still on the host. */
  private releaseIsoOut(ep: IsoOutEndpoint): void {
    while (ep.queued.length > 0 && ep.early.size < ISO_OUT_AHEAD) {
      const t = ep.queued.shift() as HostTransfer;
      ep.early.add(t);
      this.complete(t, 'ok', t.record.length);
    }
  }

  /**
   * While isochronous URBs run, one log line a second: how many went out and came back, with
   * which statuses, and how long the oldest in flight has waited (a stall shows at once).
   */
  private watchIso(): void {
    if (this.isoLogTimer !== null) return;
    this.isoLogTimer = setInterval(() => {
      if (this.released || (this.iso.submitted === this.isoLogged.submitted && this.iso.completed === this.isoLogged.completed && this.transfers.size === 0)) {
        if (this.isoLogTimer !== null) clearInterval(this.isoLogTimer);
        this.isoLogTimer = null;
        return;
      }
      const now = performance.now();
      let oldest = 0;
      let isoInFlight = 0;
      for (const t of this.transfers.values()) {
        if (t.record.type !== 'isochronous') continue;
        isoInFlight++;
        if (t.started) oldest = Math.max(oldest, now - t.arrivedAt);
      }
      const statuses = [...this.iso.statuses].map(([k, n]) => `${k} ${n}`).join(', ');
      this.link.log(`usb-host ${this.info.sysfsName}: iso URBs ${this.iso.submitted} submitted (+${this.iso.submitted - this.isoLogged.submitted}), ${this.iso.completed} completed (+${this.iso.completed - this.isoLogged.completed}), ${this.iso.bytes} bytes; ${isoInFlight} in flight, oldest ${oldest.toFixed(0)} ms; last completion ${this.iso.lastDoneAt === 0 ? 'never' : `${(now - this.iso.lastDoneAt).toFixed(0)} ms ago`}; ${statuses}`);
      this.isoLogged = { submitted: this.iso.submitted, completed: this.iso.completed };
    }, 1000);
    this.isoLogTimer.unref?.();
  }

  /** Detaches the kernel drivers bound to the active configuration's interfaces; whether there were any. */
  private detachBoundDrivers(): boolean {
    let any = false;
    for (const n of this.usb.interfaceNumbers()) {
      try {
        if (!this.usb.kernelDriverActive(n)) continue;
        this.usb.detachKernelDriver(n);
        any = true;
      } catch {
        // The retry reports what still fails.
      }
    }
    return any;
  }

  /** SET_CONFIGURATION: the host's kernel refuses it while interfaces are claimed. */
  private setConfiguration(value: number, done: (e: Error | null) => void): void {
    const claimed = [...this.claimed];
    let left = claimed.length;
    const afterRelease = (retry = true) => {
      this.usb.setConfiguration(value, (e) => {
        if (e !== null && retry && this.detachBoundDrivers()) {
          // A kernel driver took a released interface again, and the host's kernel refuses to
          // configure a device with a bound interface (EBUSY): detach and try once more, as
          // QEMU's usb-host does.
          afterRelease(false);
          return;
        }
        if (e === null) {
          try {
            this.takeInterfaces();
          } catch (err) {
            done(err as Error);
            return;
          }
        }
        done(e);
      });
    };
    if (left === 0) {
      afterRelease();
      return;
    }
    for (const n of claimed) {
      this.usb.releaseInterface(n, () => {
        this.claimed.delete(n);
        if (--left === 0) afterRelease();
      });
    }
  }

  /** A transfer found the device gone from the host: the VM host unplugs it from the guest (once). */
  private reportGone(): void {
    if (this.goneReported || this.released) return;
    this.goneReported = true;
    this.link.log(`usb-host ${this.info.sysfsName}: the device left the host`);
    this.link.gone?.();
  }

  private complete(t: HostTransfer, status: HostTransferStatus, actual: number): void {
    if (status === 'no-device') this.reportGone();
    if (this.transfers.get(t.record.id) !== t) return; // cancelled by the machine: it knows
    this.transfers.delete(t.record.id);
    this.completed++;
    if (t.submittedAt > 0) {
      this.timing.transfers++;
      this.timing.waitMs += t.submittedAt - t.arrivedAt;
      this.timing.hostMs += performance.now() - t.submittedAt;
    }
    const r = t.record;
    const n = Math.max(0, Math.min(actual, r.length));
    if (r.in && n > 0 && (status === 'ok' || status === 'babble')) {
      const base = r.type === 'control' ? SETUP : 0;
      for (let at = 0; at < n; at += PASSTHROUGH_CHUNK) {
        const bytes = t.buffer.subarray(base + at, base + Math.min(n, at + PASSTHROUGH_CHUNK));
        this.link.send(PASSTHROUGH_KIND.DATA, encodeData({ handle: this.handle, instance: r.instance, id: r.id, offset: at, bytes }));
      }
    }
    this.finish(r, status, n);
  }

  private finish(r: SubmitRecord, status: HostTransferStatus, actual: number): void {
    this.link.send(PASSTHROUGH_KIND.DONE, encodeDone({ handle: this.handle, instance: r.instance, id: r.id, status, actual, sentAt: epochMs() }));
  }

  private cancelAll(): void {
    const all = [...this.transfers.values()];
    this.transfers.clear();
    for (const ep of this.isoOut.values()) {
      ep.batch.length = 0;
      ep.queued.length = 0;
    }
    for (const t of all) t.cancel?.();
  }

  /**
   * Gives the device back: transfers cancelled, interfaces released, kernel drivers attached
   * again, the device closed, the journal entry removed. Returns what it could not do (sentences).
   */
  async release(): Promise<string[]> {
    if (this.released) return [];
    this.released = true;
    if (this.isoLogTimer !== null) clearInterval(this.isoLogTimer);
    this.isoLogTimer = null;
    this.cancelAll();
    this.waiting.length = 0;
    const problems: string[] = [];
    await Promise.all([...this.claimed].map((n) => new Promise<void>((resolve) => {
      this.usb.releaseInterface(n, (e) => {
        if (e) problems.push(`releasing interface ${n}: ${e.message}`);
        resolve();
      });
    })));
    this.claimed.clear();
    problems.push(...this.giveBackDrivers());
    try {
      this.usb.close();
    } catch (e) {
      problems.push(`closing it: ${(e as Error).message}`);
    }
    if (problems.length === 0 || this.goneReported) this.journal?.remove(this.info.sysfsName);
    return problems.map((p) => `usb-host ${this.info.sysfsName}: ${p}`);
  }

  private giveBackDrivers(): string[] {
    const problems: string[] = [];
    for (const t of this.taken.splice(0)) {
      try {
        this.usb.attachKernelDriver(t.number);
      } catch (e) {
        if (t.driver === 'unknown') {
          problems.push(`interface ${t.sysfsName} got no driver back: ${(e as Error).message}`);
          continue;
        }
        try {
          sysfsBind(t.driver, t.sysfsName, this.sysfsRoot);
        } catch (e2) {
          problems.push(`interface ${t.sysfsName} got no driver back (${t.driver}): ${(e as Error).message}; ${(e2 as Error).message}`);
        }
      }
    }
    return problems;
  }
}
