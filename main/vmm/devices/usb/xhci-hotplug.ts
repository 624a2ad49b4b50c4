// The emulated devices on the xHCI's root-hub ports, and changing them while the guest runs:
// the xHCI model's host messages (shared/usb-messages.ts). Plugs the config's devices at build
// time; at run time attaches (the same factory, createUsbDevice), detaches (transfers
// cancelled, image closed), lists the ports and types keys on the first USB keyboard. The
// guest sees each change as a Port Status Change event, from the controller's ports.
// Runs on the machine thread.
import type { UsbDeviceConfig } from '../../config';
import {
  decodeUsbRequest, encodeUsbReply, USB_CAPTURE_MAX_SNAP, USB_KIND, USB_MAX_KEY_EVENTS, type UsbKeyEvent, type UsbPortState, type UsbReply,
  type UsbRequestBody, UsbRequestError,
} from '../../shared/usb-messages';
import { UsbKeyboard } from './hid-keyboard';
import { ImageError } from './storage/block-backend';
import { UsbStorage } from './storage/usb-storage';
import type { UsbDevice } from './usb-device';
import { UsbCaptureTap } from './xhci/capture';
import type { XhciController } from './xhci';

/** Makes the device a config entry names; throws ImageError for an image that cannot be used. */
export type UsbDeviceMaker = (config: UsbDeviceConfig, options: { superSpeed: boolean }) => UsbDevice;

export interface HotplugHost {
  /** Sends a reply record to the VM host; false when the channel is full (kept and retried). */
  send(payload: Uint8Array): boolean;
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

export class XhciHotplug {
  private readonly plugged = new Map<number, Plugged>();
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
  }

  // ---- ports ---------------------------------------------------------------------------

  private freePortFor(config: UsbDeviceConfig): number {
    const free = this.controller.ports.filter((p) => p.device === null);
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
    if (config.kind !== 'storage' && port.usb3) {
      throw new UsbRequestError('invalid-argument', `a ${config.kind} needs a USB 2 port; port ${portNumber} is a USB 3 port`);
    }
    const device = this.make(config, { superSpeed: port.usb3 });
    try {
      this.controller.attach(portNumber, device);
    } catch (e) {
      closeDevice(device);
      throw new UsbRequestError('invalid-state', (e as Error).message);
    }
    this.plugged.set(portNumber, { config: { ...config, port: portNumber }, device });
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
