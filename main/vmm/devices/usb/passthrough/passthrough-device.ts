// A host USB device as the xHCI sees it: the UsbDevice side of passthrough. Runs on the
// machine thread, which sits in KVM_RUN, so it does no host I/O: every transfer goes to the VM
// host (host/usb-passthrough.ts, node-usb) as channel records and completes when the VM host's
// DONE record comes back (the send kicks vCPU 0, and Machine drains the channel).
//
// Handled here, without the host device: SET_ADDRESS (the host's kernel gave the device its
// address; the guest's address is the controller's business). Everything else, including
// SET_CONFIGURATION, SET_INTERFACE and CLEAR_FEATURE(ENDPOINT_HALT), goes to the VM host,
// which turns those into the matching host calls. Several transfers may be in flight on one
// endpoint; the host completes them in order (usbfs URBs on one endpoint complete in order).
//
// Direct URBs: when the VM host hands over its usbfs descriptor (config.usbfs, a device
// without isochronous endpoints), control, bulk and interrupt transfers skip the channel: this
// thread submits them as usbfs URBs and reaps them (direct-urbs.ts). Only the device-state
// requests above and the port reset still go to the VM host; transfers the guest queues behind
// one of those wait here until the VM host says it is done.
import type { UsbDeviceConfig } from '../../../config';
import type { KickWatch, KickWatcher } from '../../context';
import {
  decodeAddress, decodeData, decodeDone, encodeAddressOnly, encodeData, encodeIdRecord, encodeSubmit, isDeviceStateRequest,
  PASSTHROUGH_CHUNK, PASSTHROUGH_KIND, PASSTHROUGH_MAX_TRANSFER, type PassthroughStatus,
} from '../../../shared/usb-passthrough-messages';
import type { UsbDevice, UsbPortHost, UsbSpeed, UsbTransfer } from '../usb-device';
import { epochMs } from '../../../shared/control';
import { type DirectUrbs, submitErrorStatus } from './direct-urbs';
import { patchDescriptorForHighSpeed } from './high-speed-view';

export type HostDeviceConfig = Extract<UsbDeviceConfig, { kind: 'host' }>;

/** How the device reaches the VM host. */
export interface PassthroughLink {
  /** Sends a record on the xHCI's channel target; false when the channel is full (kept and retried). */
  send(kind: number, payload: Uint8Array): boolean;
  setTimer(delayMs: number, fn: () => void): () => void;
  log(text: string): void;
  /** Adopts the VM host's usbfs descriptor for direct URBs (absent: every transfer crosses the channel). Throws a sentence. */
  openDirect?(usbfs: { fd: number; path: string }): DirectUrbs;
  /** Polls a watcher after every kick and exit of vCPU 0 (a URB's completion signal kicks it). */
  kickWatch?: KickWatch;
}

interface Pending {
  transfer: UsbTransfer;
  done: (t: UsbTransfer) => void;
  /** performance.now() at submit, for the round-trip account logged at detach. */
  submittedAt: number;
  /** A direct URB's discard; null while held, or for a transfer the VM host runs. */
  discard: (() => void) | null;
  /** SET_CONFIGURATION and the like, which direct URBs queued behind it wait for. */
  stateCall: boolean;
}

/** Direct URBs' backstop: a completion signal that reached no vCPU exit is reaped this late at most. */
export const DIRECT_BACKSTOP_MS = { first: 20, max: 160 } as const;

/** Direct transfers this big or bigger are timed apart (a 1 MiB dd block's READ(10) data stage). */
const BIG_TRANSFER = 65536;

/** How soon records that found the channel full are tried again. */
const RESEND_MS = 1;

let nextInstance = 1;

export class PassthroughDevice implements UsbDevice, KickWatcher {
  readonly name: string;
  readonly speed: UsbSpeed;
  readonly vendorId: number;
  readonly productId: number;
  readonly product: string;
  readonly handle: number;
  /** Which machine-side object this is (a relaunch makes a new one): records of others are ignored. */
  readonly instance: number;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private readonly outbox: { kind: number; payload: Uint8Array }[] = [];
  private resendTimer: (() => void) | null = null;
  private port: UsbPortHost | null = null;
  private gone = false;
  /**
   * Transfers the VM host completed and their summed submit → DONE time (ms), the machine's
   * view of a round trip; of it, the DONE records' hop (VM host send → drained here: channel,
   * vCPU kick, KVM_RUN exit); and the idle gaps, from a DONE that left nothing in flight to the
   * guest's next submit (event, interrupt, guest driver, doorbell exit).
   */
  readonly roundTrips = { transfers: 0, ms: 0, doneHops: 0, doneHopMs: 0, gaps: 0, gapMs: 0 };
  /** performance.now() when the last in-flight transfer completed, or -1 while some are in flight. */
  private idleSince = -1;
  /** URBs on the VM host's usbfs file, submitted and reaped on this thread; null: all via the VM host. */
  private direct: DirectUrbs | null = null;
  /** Direct transfers waiting for a device-state call or a port reset on the VM host, in order. */
  private readonly held: number[] = [];
  private stateCalls = 0;
  private resetPending = false;
  private backstop: (() => void) | null = null;
  private backstopMs: number = DIRECT_BACKSTOP_MS.first;
  /** Set while `poll` reaps after a kick (for directCounts.byKick). */
  private reapingAfterKick = false;
  private goneSent = false;
  /**
   * Direct URBs: completed; of them reaped after a kick out of KVM_RUN (the completion signal
   * itself), by the backstop timer (a signal that kicked nothing); and the big ones (at least
   * BIG_TRANSFER bytes) with their summed submit → reaped time (ms).
   */
  readonly directCounts = { urbs: 0, byKick: 0, byBackstop: 0, big: 0, bigMs: 0 };
  /** A SuperSpeed device on a USB 2 port: the guest sees it at high speed (high-speed-view.ts). */
  readonly highSpeedView: boolean;

  /** `onUsb3Port: false` puts a SuperSpeed device on a USB 2 port; absent: it is shown at its own speed. */
  constructor(config: HostDeviceConfig, private readonly link: PassthroughLink, options: { onUsb3Port?: boolean } = {}) {
    this.handle = config.handle;
    this.name = `usb-host ${config.hostName}`;
    this.product = config.product;
    this.highSpeedView = config.speed === 'super' && options.onUsb3Port === false;
    this.speed = this.highSpeedView ? 'high' : config.speed;
    this.vendorId = config.vendorId;
    this.productId = config.productId;
    // Unique in this process, and different across processes' restarts of the machine thread.
    this.instance = ((Date.now() & 0xffff) << 16 | (nextInstance++ & 0xffff)) >>> 0;
    if (config.usbfs !== undefined && link.openDirect !== undefined && link.kickWatch !== undefined) {
      try {
        this.direct = link.openDirect(config.usbfs);
      } catch (e) {
        link.log(`${this.name}: transfers go through the VM host: ${(e as Error).message}`);
      }
    }
  }

  /** Whether control, bulk and interrupt URBs go from this thread straight to usbfs. */
  get directUrbs(): boolean {
    return this.direct !== null;
  }

  /** Transfers waiting for the VM host. */
  get inFlight(): number {
    return this.pending.size;
  }

  attach(port: UsbPortHost): void {
    this.port = port;
    this.gone = false;
  }

  detach(): void {
    this.finishAll('no-device');
    if (this.roundTrips.transfers > 0) {
      const t = this.roundTrips;
      const us = (ms: number, n: number) => (n > 0 ? ((ms * 1000) / n).toFixed(0) : '-');
      this.link.log(`${this.name}: ${t.transfers} transfers, ${us(t.ms, t.transfers)} µs per transfer from submit to the VM host's DONE (machine thread); `
        + `${us(t.doneHopMs, t.doneHops)} µs of it from the DONE's send to its drain; ${us(t.gapMs, t.gaps)} µs per idle gap from a DONE to the guest's next submit (${t.gaps} gaps)`
        + `; direct URBs ${this.directCounts.urbs}, ${this.directCounts.byBackstop} of them reaped by the backstop timer`
        + `, ${this.directCounts.byKick} after a kick; ${this.directCounts.big} of ${BIG_TRANSFER} bytes or more, ${us(this.directCounts.bigMs, this.directCounts.big)} µs each submit to reaped`);
    }
    this.closeDirect();
    this.post(PASSTHROUGH_KIND.DETACHED, encodeAddressOnly(this));
    this.gone = true;
    this.port = null;
  }

  /** The machine ends (or is rebuilt): direct URBs are discarded and the dup closed. */
  close(): void {
    this.finishAll('no-device');
    this.closeDirect();
  }

  private closeDirect(): void {
    const direct = this.direct;
    if (direct === null) return;
    this.direct = null;
    this.link.kickWatch?.remove(this);
    this.backstop?.();
    this.backstop = null;
    try {
      direct.close();
    } catch (e) {
      this.link.log(`${this.name}: closing its usbfs descriptor: ${(e as Error).message}`);
    }
  }

  reset(): void {
    this.finishAll('cancelled');
    if (this.gone) return;
    // Direct URBs wait for the host's reset: one submitted meanwhile would die in it.
    if (this.direct !== null) this.resetPending = true;
    this.post(PASSTHROUGH_KIND.RESET, encodeAddressOnly(this));
  }

  submit(transfer: UsbTransfer, done: (transfer: UsbTransfer) => void): void {
    if (this.gone) {
      transfer.status = 'no-device';
      transfer.actualLength = 0;
      done(transfer);
      return;
    }
    const setup = transfer.setup;
    if (transfer.type === 'control' && setup !== null && setup.requestType === 0x00 && setup.request === 0x05) {
      // SET_ADDRESS: the host's kernel addressed the device long ago.
      transfer.status = 'ok';
      transfer.actualLength = 0;
      done(transfer);
      return;
    }
    const id = this.nextId;
    this.nextId = (this.nextId + 1) >>> 0 || 1;
    const setupBytes = new Uint8Array(8);
    if (setup !== null) {
      setupBytes[0] = setup.requestType;
      setupBytes[1] = setup.request;
      setupBytes[2] = setup.value & 0xff;
      setupBytes[3] = setup.value >>> 8;
      setupBytes[4] = setup.index & 0xff;
      setupBytes[5] = setup.index >>> 8;
      setupBytes[6] = setup.length & 0xff;
      setupBytes[7] = setup.length >>> 8;
    }
    const now = performance.now();
    if (this.pending.size === 0 && this.idleSince >= 0) {
      this.roundTrips.gaps++;
      this.roundTrips.gapMs += now - this.idleSince;
    }
    this.idleSince = -1;
    const viaHost = this.direct === null || transfer.type === 'isochronous' || (setup !== null && isDeviceStateRequest(setupBytes));
    const p: Pending = { transfer, done, submittedAt: now, discard: null, stateCall: viaHost && this.direct !== null && transfer.type === 'control' };
    this.pending.set(id, p);
    if (!viaHost) {
      if (this.stateCalls > 0 || this.resetPending || this.held.length > 0) this.held.push(id);
      else this.submitDirect(id, p);
      return;
    }
    if (p.stateCall) this.stateCalls++;
    this.post(PASSTHROUGH_KIND.SUBMIT, encodeSubmit({
      handle: this.handle, instance: this.instance, id, endpoint: transfer.endpoint, in: transfer.in,
      type: transfer.type, setup: setupBytes, length: transfer.data.length,
    }));
    if (!transfer.in) {
      for (let at = 0; at < transfer.data.length; at += PASSTHROUGH_CHUNK) {
        // Copied: the record may wait in the outbox while the controller reuses nothing, but stay safe.
        const bytes = transfer.data.slice(at, at + PASSTHROUGH_CHUNK);
        this.post(PASSTHROUGH_KIND.DATA, encodeData({ handle: this.handle, instance: this.instance, id, offset: at, bytes }));
      }
    }
  }

  cancel(transfer: UsbTransfer): void {
    for (const [id, p] of this.pending) {
      if (p.transfer !== transfer) continue;
      this.pending.delete(id);
      if (p.discard !== null) this.discardDirect(p);
      else if (this.direct === null || p.stateCall || transfer.type === 'isochronous') this.post(PASSTHROUGH_KIND.CANCEL, encodeIdRecord(this, id));
      if (p.stateCall) this.stateCallEnded();
      transfer.status = 'cancelled';
      transfer.actualLength = 0;
      p.done(transfer);
      return;
    }
  }

  /** A record from the VM host for this handle (the router checked the handle). */
  onHostRecord(kind: number, payload: Uint8Array): void {
    if (kind === PASSTHROUGH_KIND.RESET_DONE) {
      const a = decodeAddress(payload);
      if (a === null || a.instance !== this.instance || !this.resetPending) return;
      this.resetPending = false;
      this.submitHeld();
      return;
    }
    if (kind === PASSTHROUGH_KIND.DATA) {
      const r = decodeData(payload);
      if (r === null || r.instance !== this.instance) return;
      const p = this.pending.get(r.id);
      // Bounds: IN bytes land only inside the buffer the guest gave.
      if (p === undefined || !p.transfer.in || r.offset > p.transfer.data.length || r.bytes.length > p.transfer.data.length - r.offset) return;
      p.transfer.data.set(r.bytes, r.offset);
    } else if (kind === PASSTHROUGH_KIND.DONE) {
      const r = decodeDone(payload);
      if (r === null || r.instance !== this.instance) return;
      const p = this.pending.get(r.id);
      if (p === undefined) return;
      this.pending.delete(r.id);
      const now = performance.now();
      this.roundTrips.transfers++;
      this.roundTrips.ms += now - p.submittedAt;
      if (r.sentAt !== undefined) {
        const hop = epochMs() - r.sentAt;
        // Both threads read one clock; a negative or huge hop means it stepped: left out.
        if (hop >= 0 && hop < 10_000) {
          this.roundTrips.doneHops++;
          this.roundTrips.doneHopMs += hop;
        }
      }
      if (this.pending.size === 0) this.idleSince = now;
      p.transfer.status = r.status;
      p.transfer.actualLength = Math.min(r.actual, p.transfer.data.length);
      if (this.highSpeedView && p.transfer.type === 'control' && p.transfer.setup !== null && r.status === 'ok') {
        patchDescriptorForHighSpeed(p.transfer.setup, p.transfer.data, p.transfer.actualLength);
      }
      p.done(p.transfer);
      if (p.stateCall) this.stateCallEnded();
    }
  }

  // --- direct URBs -------------------------------------------------------------------

  private submitDirect(id: number, p: Pending): void {
    const direct = this.direct as DirectUrbs;
    const t = p.transfer;
    const length = t.data.length;
    // The guest's lengths: a TD beyond what the host side takes fails here, as the VM host's would.
    if (length > PASSTHROUGH_MAX_TRANSFER) {
      this.completeDirect(id, p, 'error', 0, null);
      return;
    }
    let data: Uint8Array;
    let endpoint: number;
    if (t.type === 'control') {
      const s = t.setup;
      data = new Uint8Array(8 + length);
      if (s !== null) {
        data[0] = s.requestType;
        data[1] = s.request;
        data[2] = s.value & 0xff;
        data[3] = s.value >>> 8;
        data[4] = s.index & 0xff;
        data[5] = s.index >>> 8;
        // usbfs moves wLength bytes and refuses a buffer shorter than that: the data stage's size.
        data[6] = Math.min(s.length, length) & 0xff;
        data[7] = Math.min(s.length, length) >>> 8;
      }
      if (!t.in) data.set(t.data, 8);
      endpoint = 0;
    } else {
      // The transfer's own buffer is the URB's: a 1 MiB read is then copied once (into guest
      // memory by the xHCI), not allocated twice and copied twice more on the way.
      data = t.data;
      endpoint = (t.endpoint & 0x0f) | (t.in ? 0x80 : 0);
    }
    try {
      p.discard = direct.submit({ type: t.type === 'control' ? 'control' : t.type === 'interrupt' ? 'interrupt' : 'bulk', endpoint, data, inPlace: t.type !== 'control' }, (status, actual, bytes) => {
        this.completeDirect(id, p, status, actual, bytes);
      });
    } catch (e) {
      this.completeDirect(id, p, submitErrorStatus(e), 0, null);
      return;
    }
    this.link.kickWatch?.add(this);
    this.armBackstop();
  }

  private completeDirect(id: number, p: Pending, status: PassthroughStatus, actual: number, bytes: Uint8Array | null): void {
    if (this.pending.get(id) !== p) return; // cancelled: the guest knows
    this.pending.delete(id);
    const t = p.transfer;
    const now = performance.now();
    this.roundTrips.transfers++;
    this.roundTrips.ms += now - p.submittedAt;
    this.directCounts.urbs++;
    if (this.reapingAfterKick) this.directCounts.byKick++;
    if (t.data.length >= BIG_TRANSFER) {
      this.directCounts.big++;
      this.directCounts.bigMs += now - p.submittedAt;
    }
    if (this.pending.size === 0) this.idleSince = now;
    const n = Math.max(0, Math.min(actual, t.data.length));
    if (t.in && bytes !== null && bytes !== t.data && n > 0 && (status === 'ok' || status === 'babble')) {
      const base = t.type === 'control' ? 8 : 0;
      t.data.set(bytes.subarray(base, base + n), 0);
    }
    if (status === 'no-device' && !this.goneSent) {
      this.goneSent = true;
      this.post(PASSTHROUGH_KIND.GONE, encodeAddressOnly(this));
    }
    t.status = status;
    t.actualLength = n;
    if (this.highSpeedView && t.type === 'control' && t.setup !== null && status === 'ok') patchDescriptorForHighSpeed(t.setup, t.data, n);
    p.done(t);
  }

  private discardDirect(p: Pending): void {
    try {
      p.discard?.();
    } catch (e) {
      this.link.log(`${this.name}: discarding a URB: ${(e as Error).message}`);
    }
  }

  /** Reaps completed direct URBs (after a kick or an exit of vCPU 0). */
  poll(kicked: boolean): void {
    const direct = this.direct;
    if (direct === null) return;
    this.reapingAfterKick = kicked;
    try {
      direct.reap();
    } catch (e) {
      this.link.log(`${this.name}: reaping URBs: ${(e as Error).message}`);
    } finally {
      this.reapingAfterKick = false;
    }
    if (this.direct !== null && this.direct.inFlight === 0) this.link.kickWatch?.remove(this);
  }

  /**
   * A completion signal can land while this thread runs JavaScript just before it enters
   * KVM_RUN (or on another thread): a timer then reaps it, from 20 ms, backing off while idle.
   */
  private armBackstop(): void {
    if (this.backstop !== null) return;
    this.backstop = this.link.setTimer(this.backstopMs, () => {
      this.backstop = null;
      const direct = this.direct;
      if (direct === null) return;
      let reaped = 0;
      try {
        reaped = direct.reap();
      } catch (e) {
        this.link.log(`${this.name}: reaping URBs: ${(e as Error).message}`);
      }
      this.directCounts.byBackstop += reaped;
      if (direct.inFlight === 0) {
        this.link.kickWatch?.remove(this);
        this.backstopMs = DIRECT_BACKSTOP_MS.first;
        return;
      }
      this.backstopMs = reaped > 0 ? DIRECT_BACKSTOP_MS.first : Math.min(DIRECT_BACKSTOP_MS.max, this.backstopMs * 2);
      this.armBackstop();
    });
  }

  private stateCallEnded(): void {
    if (this.stateCalls > 0) this.stateCalls--;
    if (this.stateCalls === 0) this.submitHeld();
  }

  /** Direct transfers that waited for the VM host, in order, while nothing else holds them. */
  private submitHeld(): void {
    while (this.held.length > 0 && this.stateCalls === 0 && !this.resetPending && this.direct !== null) {
      const id = this.held.shift() as number;
      const p = this.pending.get(id);
      if (p !== undefined) this.submitDirect(id, p);
    }
  }

  private finishAll(status: 'no-device' | 'cancelled'): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    this.held.length = 0;
    this.stateCalls = 0;
    for (const p of all) {
      if (p.discard !== null) this.discardDirect(p);
      p.transfer.status = status;
      p.transfer.actualLength = 0;
      p.done(p.transfer);
    }
  }

  private post(kind: number, payload: Uint8Array): void {
    if (this.outbox.length === 0 && this.link.send(kind, payload)) return;
    this.outbox.push({ kind, payload });
    if (this.resendTimer === null) this.resendTimer = this.link.setTimer(RESEND_MS, () => this.flush());
  }

  /** Records that found the channel full, in order, once the VM host has made room. */
  private flush(): void {
    this.resendTimer = null;
    while (this.outbox.length > 0) {
      const next = this.outbox[0];
      if (!this.link.send(next.kind, next.payload)) {
        this.resendTimer = this.link.setTimer(RESEND_MS, () => this.flush());
        return;
      }
      this.outbox.shift();
    }
  }
}

/** Routes the VM host's passthrough records to the device with their handle. */
export class PassthroughRouter {
  private readonly devices = new Map<number, PassthroughDevice>();

  constructor(private readonly link: PassthroughLink) {}

  /** Makes the machine-side device of a host device config (replacing an older one of that handle). */
  create(config: HostDeviceConfig, options: { onUsb3Port?: boolean } = {}): PassthroughDevice {
    this.devices.get(config.handle)?.close();
    const device = new PassthroughDevice(config, this.link, options);
    this.devices.set(config.handle, device);
    return device;
  }

  /** The machine ends: every device's direct URBs are discarded and their descriptors closed. */
  close(): void {
    for (const d of this.devices.values()) d.close();
    this.devices.clear();
  }

  handle(kind: number, payload: Uint8Array): void {
    if (payload.length < 4) return;
    const handle = new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0, true);
    this.devices.get(handle)?.onHostRecord(kind, payload);
  }
}
