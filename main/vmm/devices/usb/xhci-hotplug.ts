// The emulated devices on the xHCI's root-hub ports, and changing them while the guest runs:
// the xHCI model's host messages (shared/usb-messages.ts). Plugs the config's devices at build
// time; at run time attaches (the same factory, createUsbDevice), detaches (transfers
// cancelled, image closed), lists the ports and types keys on the first USB keyboard. The
// guest sees each change as a Port Status Change event, from the controller's ports.
// USB serial ports' bytes go both ways here too, named by the link the VM host gave each.
// Runs on the machine thread.
import type { UsbDeviceConfig } from '../../config';
import {
  decodeSerialData, decodeUsbRequest, encodeSerialData, encodeUsbReply, USB_CAPTURE_MAX_SNAP, USB_KIND, USB_MAX_KEY_EVENTS, type UsbKeyEvent, type UsbPortState, type UsbReply,
  type UsbRequestBody, UsbRequestError,
} from '../../shared/usb-messages';
import { UsbSerialAcm } from './cdc-acm';
import { UsbKeyboard } from './hid-keyboard';
import { ImageError } from './storage/block-backend';
import { UsbStorage } from './storage/usb-storage';
import type { UsbDevice } from './usb-device';
import { UsbCaptureTap } from './xhci/capture';
import type { XhciController } from './xhci';

/** Where a USB serial port's guest output goes, and its news that it can take input again. */
export interface UsbSerialLink {
  /** False: not now (the transfer waits and is retried). */
  onOutput(bytes: Uint8Array): boolean;
  onReceiveSpace(): void;
}

/** Makes the device a config entry names; throws ImageError for an image that cannot be used. */
export type UsbDeviceMaker = (config: UsbDeviceConfig, options: { superSpeed: boolean; serial?: UsbSerialLink }) => UsbDevice;

export interface HotplugHost {
  /** Sends a reply record to the VM host; false when the channel is full (kept and retried). */
  send(payload: Uint8Array): boolean;
  /** Sends a USB serial port's output record (USB_KIND.SERIAL_OUTPUT); false when the channel is full. Absent: output is dropped. */
  sendSerial?(payload: Uint8Array): boolean;
  setTimer(delayMs: number, fn: () => void): () => void;
  log(text: string): void;
  /** Sends one capture record; false when the channel is full (the record is dropped and counted). */
  sendCapture?(record: Uint8Array): boolean;
}

/** Keyboard reports allowed to wait for the guest before more key events are fed in. */
const KEY_QUEUE_HIGH_WATER = 16;
/** How often a paced key job looks whether the guest has taken reports. */
const KEY_PACE_MS = 8;
/** How soon a reply that found the channel full is tried again. */
const RESEND_MS = 5;
/** Host input held per USB serial port while the device's own buffer is full; beyond it input is dropped. */
const SERIAL_INPUT_BACKLOG_BYTES = 1 << 20;
/** Guest output bytes per channel record (a bulk OUT transfer may be longer than a channel). */
const SERIAL_OUTPUT_RECORD_BYTES = 8192;

interface KeyJob {
  id: number;
  keyboard: UsbKeyboard;
  events: UsbKeyEvent[];
  next: number;
}

interface Plugged {
  config: UsbDeviceConfig;
  device: UsbDevice;
}

/** A USB serial port's host side on this thread: input it could not take yet, a pending output retry. */
interface SerialState {
  device: UsbSerialAcm;
  backlog: Uint8Array[];
  backlogBytes: number;
  dropped: number;
  /** The part of a long transfer's output the channel had no room for yet (sent before more is taken). */
  outbox: Uint8Array | null;
  outputRetry: (() => void) | null;
}

type HostConfig = Extract<UsbDeviceConfig, { kind: 'host' }>;

function describeHost(config: HostConfig): string {
  return `the SuperSpeed device ${config.product} (host ${config.hostName}, ${hex4(config.vendorId)}:${hex4(config.productId)})`;
}

const hex4 = (n: number) => n.toString(16).padStart(4, '0');

/** Why a SuperSpeed host device may not be shown at high speed on a USB 2 port, or null if it may. */
function usb2RefusalFor(config: HostConfig): string | null {
  if (config.usb2Refusal === undefined) return 'its descriptors were not checked for isochronous endpoints and streams';
  return config.usb2Refusal === null ? null
    : `a SuperSpeed device may go on a USB 2 port only if it has no isochronous endpoints and no streams, and ${config.usb2Refusal}`;
}

export class XhciHotplug {
  private readonly plugged = new Map<number, Plugged>();
  /** USB serial ports by link. */
  private readonly serials = new Map<number, SerialState>();
  private readonly keyJobs: KeyJob[] = [];
  private keyTimer: (() => void) | null = null;
  private readonly unsent: Uint8Array[] = [];
  private resendTimer: (() => void) | null = null;
  private closed = false;

  constructor(
    private readonly controller: XhciController,
    private readonly make: UsbDeviceMaker,
    private readonly host: HotplugHost,
  ) {}

  /**
   * Plugs the config's devices: those with a port first, then each of the others on the first
   * free port of its speed. Throws naming the entry; the images opened before are closed.
   */
  plugConfigured(devices: readonly UsbDeviceConfig[], where = 'usb.devices'): void {
    const order = devices.map((d, i) => ({ d, i })).sort((a, b) => (a.d.port === undefined ? 1 : 0) - (b.d.port === undefined ? 1 : 0));
    try {
      for (const { d, i } of order) {
        try {
          // Without a port, the same rule as at run time: a stick on USB 3 (SuperSpeed) while one is free.
          this.plugAt(d.port ?? this.freePortFor(d), d);
        } catch (e) {
          if (e instanceof ImageError) throw e;
          throw new Error(`${where}[${i}]: ${(e as Error).message}`);
        }
      }
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /** Plugs a device in at run time; returns its port. Throws UsbRequestError (nothing plugged). */
  attach(config: UsbDeviceConfig): number {
    const port = config.port ?? this.freePortFor(config);
    try {
      this.plugAt(port, config);
    } catch (e) {
      if (e instanceof ImageError) {
        const code = e.problem === 'missing' ? 'not-found' : e.problem === 'locked' ? 'invalid-state' : 'invalid-argument';
        throw new UsbRequestError(code, e.message);
      }
      throw e;
    }
    return port;
  }

  /** Unplugs the device on `port`: its transfers are cancelled and its image closed. */
  detach(port: number): UsbDeviceConfig {
    const entry = this.plugged.get(port);
    if (entry === undefined) {
      if (!Number.isInteger(port) || port < 1 || port > this.controller.ports.length) {
        throw new UsbRequestError('invalid-argument', `there is no USB port ${port} (ports 1 to ${this.controller.ports.length})`);
      }
      throw new UsbRequestError('invalid-state', `USB port ${port} is empty`);
    }
    this.plugged.delete(port);
    this.controller.detach(port);
    closeDevice(entry.device);
    this.dropSerial(entry.config);
    for (const job of this.keyJobs.filter((j) => j.keyboard === entry.device)) this.finishKeys(job, 'the USB keyboard was removed before every key was sent');
    return entry.config;
  }

  ports(): UsbPortState[] {
    return this.controller.ports.map((p) => {
      // Every device on a port came through here, so it has an entry.
      const entry = this.plugged.get(p.number);
      const d = p.device;
      return {
        port: p.number,
        protocol: p.usb3 ? 'usb3' : 'usb2',
        device: d === null || entry === undefined ? null : {
          kind: entry.config.kind,
          name: d.name,
          product: (d as { product?: string }).product ?? d.name,
          speed: d.speed,
          vendorId: d.vendorId,
          productId: d.productId,
          path: entry.config.kind === 'storage' ? entry.config.path : null,
          readOnly: entry.config.kind === 'storage' ? entry.config.readOnly : null,
          // The VM host puts the opened endpoint's own description here.
          ...(entry.config.kind === 'serial' ? { endpoint: entry.config.backend } : {}),
          ...(entry.config.kind === 'host' ? { hostDevice: entry.config.hostName } : {}),
        },
      };
    });
  }

  /** The devices plugged in, each with its port (what a relaunch plugs in again). */
  pluggedConfigs(): UsbDeviceConfig[] {
    return [...this.plugged.values()].map((e) => ({ ...e.config })).sort((a, b) => (a.port ?? 0) - (b.port ?? 0));
  }

  /** A record from the VM host. Every request gets exactly one reply. */
  handle(kind: number, payload: Uint8Array): void {
    if (kind === USB_KIND.SERIAL_INPUT) {
      this.serialInput(payload);
      return;
    }
    if (kind !== USB_KIND.REQUEST) return;
    const message = decodeUsbRequest(payload);
    if (message === null) {
      this.host.log('xhci: a USB request that is not JSON with an id was dropped');
      return;
    }
    const id = message.id;
    try {
      const body = message as unknown as UsbRequestBody;
      switch (body.op) {
        case 'list':
          this.replyOk(id);
          return;
        case 'attach':
          this.replyOk(id, this.attach(body.device));
          return;
        case 'detach': {
          const port = body.port;
          this.detach(port);
          this.replyOk(id, port);
          return;
        }
        case 'keys':
          this.startKeys(id, body.events);
          return;
        case 'capture':
          this.send({ id, ok: true, ports: this.ports(), plugged: this.pluggedConfigs(), capture: this.capture(body.portMask, body.snapLength) });
          return;
        default:
          throw new UsbRequestError('invalid-argument', 'unknown USB request');
      }
    } catch (e) {
      this.replyError(id, e);
    }
  }

  /** Releases the images; the machine is ending (or its build failed). */
  close(): void {
    this.closed = true;
    this.controller.setCapture(null);
    this.keyTimer?.();
    this.keyTimer = null;
    this.resendTimer?.();
    this.resendTimer = null;
    this.keyJobs.length = 0;
    for (const e of this.plugged.values()) closeDevice(e.device);
    this.plugged.clear();
    for (const state of this.serials.values()) state.outputRetry?.();
    this.serials.clear();
  }

  // ---- ports ---------------------------------------------------------------------------

  private freePortFor(config: UsbDeviceConfig): number {
    const free = this.controller.ports.filter((p) => p.device === null);
    // A host device goes on a port of its own speed: SuperSpeed on USB 3, the rest on USB 2. A
    // SuperSpeed device takes a USB 2 port (at high speed) when no USB 3 port is free, if it may.
    if (config.kind === 'host') {
      const port = free.find((p) => p.usb3 === (config.speed === 'super'));
      if (port !== undefined) return port.number;
      const usb2 = config.speed === 'super' ? free.find((p) => !p.usb3) : undefined;
      if (usb2 === undefined) throw new UsbRequestError('invalid-state', `the xHCI controller has no free ${config.speed === 'super' ? 'USB 3' : 'USB 2'} port for ${config.product}`);
      const refusal = usb2RefusalFor(config);
      if (refusal !== null) {
        throw new UsbRequestError('invalid-state', `the xHCI controller has no free USB 3 port for ${describeHost(config)}, and it cannot go on a USB 2 port instead: ${refusal}`);
      }
      return usb2.number;
    }
    // Storage runs at SuperSpeed where a USB 3 port is free; HID devices are full speed.
    const port = config.kind === 'storage' ? (free.find((p) => p.usb3) ?? free.find((p) => !p.usb3)) : free.find((p) => !p.usb3);
    if (port === undefined) {
      const which = config.kind === 'storage' ? 'port' : 'USB 2 port';
      throw new UsbRequestError('invalid-state', `the xHCI controller has no free ${which} for a ${config.kind}`);
    }
    return port.number;
  }

  private plugAt(portNumber: number, config: UsbDeviceConfig): void {
    const port = this.controller.ports[portNumber - 1];
    if (!Number.isInteger(portNumber) || port === undefined) {
      throw new UsbRequestError('invalid-argument', `there is no USB port ${portNumber} (ports 1 to ${this.controller.ports.length})`);
    }
    if (port.device !== null) throw new UsbRequestError('invalid-state', `USB port ${portNumber} already has ${port.device.name}`);
    if (config.kind === 'host' && port.usb3 && config.speed !== 'super') {
      throw new UsbRequestError('invalid-argument', `${config.product} runs at ${config.speed} speed and needs a USB 2 port; port ${portNumber} is a USB 3 port`);
    }
    if (config.kind === 'host' && !port.usb3 && config.speed === 'super') {
      const refusal = usb2RefusalFor(config);
      if (refusal !== null) throw new UsbRequestError('invalid-argument', `${describeHost(config)} cannot go on port ${portNumber}, a USB 2 port: ${refusal}`);
    }
    if (config.kind !== 'storage' && config.kind !== 'host' && port.usb3) {
      throw new UsbRequestError('invalid-argument', `a ${config.kind} needs a USB 2 port; port ${portNumber} is a USB 3 port`);
    }
    let serial: UsbSerialLink | undefined;
    if (config.kind === 'serial') {
      const link = config.link;
      if (link === undefined || !Number.isInteger(link) || link < 0 || link > 0xffffffff || this.serials.has(link)) {
        throw new UsbRequestError('invalid-argument', `a USB serial port needs a link of its own from the VM host (got ${String(link)})`);
      }
      serial = { onOutput: (bytes) => this.serialOutput(link, bytes), onReceiveSpace: () => this.flushSerialInput(link) };
    }
    const device = this.make(config, { superSpeed: port.usb3, serial });
    try {
      this.controller.attach(portNumber, device);
    } catch (e) {
      closeDevice(device);
      throw new UsbRequestError('invalid-state', (e as Error).message);
    }
    this.plugged.set(portNumber, { config: { ...config, port: portNumber }, device });
    if (config.kind === 'serial' && device instanceof UsbSerialAcm) {
      this.serials.set(config.link as number, { device, backlog: [], backlogBytes: 0, dropped: 0, outbox: null, outputRetry: null });
    }
  }

  // ---- USB serial ports ------------------------------------------------------------------

  /**
   * Guest output: to the VM host in records. A full channel makes the transfer wait (false)
   * and retries soon; a long transfer whose later records found no room completes, and the
   * rest goes first when the retry finds room.
   */
  private serialOutput(link: number, bytes: Uint8Array): boolean {
    const state = this.serials.get(link);
    const send = this.host.sendSerial;
    if (state === undefined || send === undefined) return true;
    if (!this.sendOutbox(state, link)) {
      this.retryOutput(state, link);
      return false;
    }
    let at = 0;
    while (at < bytes.length) {
      const part = bytes.subarray(at, at + SERIAL_OUTPUT_RECORD_BYTES);
      if (!send(encodeSerialData(link, part))) break;
      at += part.length;
    }
    if (at === bytes.length) return true;
    if (at > 0) state.outbox = bytes.slice(at);
    this.retryOutput(state, link);
    return at > 0;
  }

  /** Sends what an earlier transfer left; true once nothing is left. */
  private sendOutbox(state: SerialState, link: number): boolean {
    const send = this.host.sendSerial;
    while (state.outbox !== null && send !== undefined) {
      const part = state.outbox.subarray(0, SERIAL_OUTPUT_RECORD_BYTES);
      if (!send(encodeSerialData(link, part))) return false;
      state.outbox = part.length === state.outbox.length ? null : state.outbox.subarray(part.length);
    }
    return true;
  }

  /** Soon: the rest of a transfer out, then a waiting transfer retried. */
  private retryOutput(state: SerialState, link: number): void {
    if (state.outputRetry !== null || this.closed) return;
    state.outputRetry = this.host.setTimer(RESEND_MS, () => {
      state.outputRetry = null;
      if (this.serials.get(link) !== state) return;
      if (!this.sendOutbox(state, link)) this.retryOutput(state, link);
      else state.device.outputReady();
    });
  }

  /** Host input for a USB serial port: what its buffer cannot take waits here, in order. */
  private serialInput(payload: Uint8Array): void {
    const data = decodeSerialData(payload);
    if (data === null) return;
    const state = this.serials.get(data.link);
    // Input for a port unplugged meanwhile has nowhere to go.
    if (state === undefined || data.bytes.length === 0) return;
    if (state.backlog.length === 0) {
      const taken = state.device.receive(data.bytes);
      if (taken === data.bytes.length) return;
      this.queueSerialInput(state, data.bytes.subarray(taken));
    } else {
      this.queueSerialInput(state, data.bytes);
    }
  }

  private queueSerialInput(state: SerialState, bytes: Uint8Array): void {
    if (state.backlogBytes + bytes.length > SERIAL_INPUT_BACKLOG_BYTES) {
      if (state.dropped === 0) this.host.log(`${state.device.name}: the guest is not reading; dropping host input`);
      state.dropped += bytes.length;
      return;
    }
    state.backlog.push(Uint8Array.from(bytes));
    state.backlogBytes += bytes.length;
  }

  private flushSerialInput(link: number): void {
    const state = this.serials.get(link);
    if (state === undefined) return;
    while (state.backlog.length > 0) {
      const next = state.backlog[0];
      const taken = state.device.receive(next);
      state.backlogBytes -= taken;
      if (taken < next.length) {
        state.backlog[0] = next.subarray(taken);
        return;
      }
      state.backlog.shift();
    }
    if (state.dropped > 0) {
      this.host.log(`${state.device.name}: the guest reads again; ${state.dropped} bytes of host input were dropped`);
      state.dropped = 0;
    }
  }

  private dropSerial(config: UsbDeviceConfig): void {
    if (config.kind !== 'serial' || config.link === undefined) return;
    this.serials.get(config.link)?.outputRetry?.();
    this.serials.delete(config.link);
  }

  // ---- capture -------------------------------------------------------------------------

  /** Replaces the running capture (mask 0: stops it); returns what the one before sent. */
  private capture(portMask: unknown, snapLength: unknown): { sent: number; dropped: number } {
    if (!Number.isInteger(portMask) || (portMask as number) < 0 || (portMask as number) > 0x7fffffff
      || !Number.isInteger(snapLength) || (snapLength as number) < 0 || (snapLength as number) > USB_CAPTURE_MAX_SNAP) {
      throw new UsbRequestError('invalid-argument', `a capture needs a port mask and a snap length of 0 to ${USB_CAPTURE_MAX_SNAP}`);
    }
    const before = this.controller.capture;
    const result = { sent: before?.sent ?? 0, dropped: before?.dropped ?? 0 };
    const send = this.host.sendCapture;
    const options = { portMask: portMask as number, snapLength: snapLength as number };
    if (portMask === 0 || send === undefined) {
      if (portMask !== 0) throw new UsbRequestError('invalid-state', 'this machine cannot send capture records');
      this.controller.setCapture(null);
    } else if (before !== null) {
      // The same tap, so transfers in flight keep their Submit's id and get their Complete.
      return before.reconfigure(options);
    } else {
      this.controller.setCapture(new UsbCaptureTap(
        { portMask: portMask as number, snapLength: snapLength as number },
        { send: (record) => send.call(this.host, record) },
      ));
    }
    return result;
  }

  // ---- keys ----------------------------------------------------------------------------

  private startKeys(id: number, events: unknown): void {
    if (!Array.isArray(events) || events.length > USB_MAX_KEY_EVENTS
      || !events.every((e: UsbKeyEvent) => typeof e === 'object' && e !== null && Number.isInteger(e.usage) && e.usage >= 4 && e.usage <= 0xff && typeof e.down === 'boolean')) {
      throw new UsbRequestError('invalid-argument', 'key events must be a list of { usage: 4..255, down }');
    }
    const keyboard = this.controller.ports.map((p) => p.device).find((d): d is UsbKeyboard => d instanceof UsbKeyboard);
    if (keyboard === undefined) throw new UsbRequestError('invalid-state', 'this VM has no USB keyboard; add one first');
    if (!keyboard.configured) {
      throw new UsbRequestError('invalid-state', 'the guest has not set up the USB keyboard yet (no driver has configured it)');
    }
    this.keyJobs.push({ id, keyboard, events: events as UsbKeyEvent[], next: 0 });
    if (this.keyJobs.length === 1) this.pumpKeys();
  }

  /** Feeds key events while the keyboard's report queue has room; the rest after the guest polls. */
  private pumpKeys(): void {
    this.keyTimer = null;
    while (this.keyJobs.length > 0 && !this.closed) {
      const job = this.keyJobs[0];
      while (job.next < job.events.length && job.keyboard.queuedReports < KEY_QUEUE_HIGH_WATER) {
        const e = job.events[job.next++];
        job.keyboard.key(e.usage, e.down);
      }
      if (job.next < job.events.length) {
        this.keyTimer = this.host.setTimer(KEY_PACE_MS, () => this.pumpKeys());
        return;
      }
      this.finishKeys(job, null);
    }
  }

  private finishKeys(job: KeyJob, error: string | null): void {
    const at = this.keyJobs.indexOf(job);
    if (at < 0) return;
    this.keyJobs.splice(at, 1);
    if (error === null) this.replyOk(job.id);
    else this.replyError(job.id, new UsbRequestError('invalid-state', error));
    if (at === 0 && this.keyJobs.length > 0 && this.keyTimer === null) this.keyTimer = this.host.setTimer(0, () => this.pumpKeys());
  }

  // ---- replies -------------------------------------------------------------------------

  private replyOk(id: number, port?: number): void {
    this.send({ id, ok: true, ports: this.ports(), port, plugged: this.pluggedConfigs() });
  }

  private replyError(id: number, e: unknown): void {
    if (e instanceof UsbRequestError) {
      this.send({ id, ok: false, code: e.code, error: e.message });
    } else {
      this.host.log(`xhci: USB request ${id} failed: ${(e as Error).stack ?? String(e)}`);
      this.send({ id, ok: false, code: 'invalid-state', error: `the USB request failed: ${(e as Error).message}` });
    }
  }

  private send(reply: UsbReply): void {
    const payload = encodeUsbReply(reply);
    if (this.unsent.length === 0 && this.host.send(payload)) return;
    this.unsent.push(payload);
    if (this.resendTimer === null) this.resendTimer = this.host.setTimer(RESEND_MS, () => this.sendUnsent());
  }

  /** Replies that found the channel full, in order, once the VM host has made room. */
  private sendUnsent(): void {
    this.resendTimer = null;
    while (this.unsent.length > 0 && !this.closed) {
      if (!this.host.send(this.unsent[0])) {
        this.resendTimer = this.host.setTimer(RESEND_MS, () => this.sendUnsent());
        return;
      }
      this.unsent.shift();
    }
  }
}

function closeDevice(device: UsbDevice): void {
  if (device instanceof UsbStorage) device.close();
}
