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
import type { UsbDeviceConfig } from '../../../config';
import {
  decodeData, decodeDone, encodeAddressOnly, encodeData, encodeIdRecord, encodeSubmit, PASSTHROUGH_CHUNK,
  PASSTHROUGH_KIND,
} from '../../../shared/usb-passthrough-messages';
import type { UsbDevice, UsbPortHost, UsbSpeed, UsbTransfer } from '../usb-device';
import { epochMs } from '../../../shared/control';
import { patchDescriptorForHighSpeed } from './high-speed-view';

export type HostDeviceConfig = Extract<UsbDeviceConfig, { kind: 'host' }>;

/** How the device reaches the VM host. */
export interface PassthroughLink {
  /** Sends a record on the xHCI's channel target; false when the channel is full (kept and retried). */
  send(kind: number, payload: Uint8Array): boolean;
  setTimer(delayMs: number, fn: () => void): () => void;
  log(text: string): void;
}

interface Pending {
  transfer: UsbTransfer;
  done: (t: UsbTransfer) => void;
  /** performance.now() at submit, for the round-trip account logged at detach. */
  submittedAt: number;
}

/** How soon records that found the channel full are tried again. */
const RESEND_MS = 1;

let nextInstance = 1;

export class PassthroughDevice implements UsbDevice {
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
        + `${us(t.doneHopMs, t.doneHops)} µs of it from the DONE's send to its drain; ${us(t.gapMs, t.gaps)} µs per idle gap from a DONE to the guest's next submit (${t.gaps} gaps)`);
    }
    this.post(PASSTHROUGH_KIND.DETACHED, encodeAddressOnly(this));
    this.gone = true;
    this.port = null;
  }

  reset(): void {
    this.finishAll('cancelled');
    if (!this.gone) this.post(PASSTHROUGH_KIND.RESET, encodeAddressOnly(this));
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
    this.pending.set(id, { transfer, done, submittedAt: now });
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
      this.post(PASSTHROUGH_KIND.CANCEL, encodeIdRecord(this, id));
      transfer.status = 'cancelled';
      transfer.actualLength = 0;
      p.done(transfer);
      return;
    }
  }

  /** A record from the VM host for this handle (the router checked the handle). */
  onHostRecord(kind: number, payload: Uint8Array): void {
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
    }
  }

  private finishAll(status: 'no-device' | 'cancelled'): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) {
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
    const device = new PassthroughDevice(config, this.link, options);
    this.devices.set(config.handle, device);
    return device;
  }

  handle(kind: number, payload: Uint8Array): void {
    if (payload.length < 4) return;
    const handle = new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0, true);
    this.devices.get(handle)?.onHostRecord(kind, payload);
  }
}
