// The live host USB device list: watchers get the full list at once and again whenever it
// changes. Changes come from node-usb's hotplug events (libusb's udev monitor) when it has
// them, re-listed after a short settle delay because the kernel binds drivers after the
// attach event; without hotplug (or without udevd, which feeds it), sysfs is polled every 2 s. With hotplug a slow poll still
// runs, for what no event announces (a VM taking or giving back a device, driver binds).
import fs from 'node:fs';
import type { usb as UsbModule } from 'usb';

/** Something that says "the device set changed"; null from `start` when it cannot. */
export interface HostUsbChangeSource {
  start(onChange: () => void): (() => void) | null;
}

export interface HostUsbWatchTimers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  setInterval(fn: () => void, ms: number): unknown;
  clearInterval(handle: unknown): void;
}

const REAL_TIMERS: HostUsbWatchTimers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms).unref(),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
  setInterval: (fn, ms) => setInterval(fn, ms).unref(),
  clearInterval: (h) => clearInterval(h as NodeJS.Timeout),
};

export const HOST_USB_POLL_MS = 2000;
export const HOST_USB_SLOW_POLL_MS = 10000;
export const HOST_USB_SETTLE_MS = 300;

/**
 * Whether udevd runs (its control socket is there: the test libudev makes too). node-usb's
 * libusb takes its hotplug events from libudev's monitor, which only udevd feeds: without it
 * no event ever comes, and libusb's device list stays as it was at start.
 */
export function udevRunning(controlPath = '/run/udev/control'): boolean {
  return fs.existsSync(controlPath);
}

/** node-usb's attach/detach events, if its libusb has hotplug support and udevd feeds it. */
export function nodeUsbHotplugSource(udevControl = '/run/udev/control'): HostUsbChangeSource {
  return { start: (onChange) => startNodeUsbHotplug(onChange, udevControl) };
}

export const nodeUsbHotplug: HostUsbChangeSource = nodeUsbHotplugSource();

function startNodeUsbHotplug(onChange: () => void, udevControl: string): (() => void) | null {
  let usb: typeof UsbModule;
  try {
    usb = (require('usb') as { usb: typeof UsbModule }).usb;
  } catch {
    return null; // node-usb did not load: sysfs polling only
  }
  // node-usb would fall back to its own polling of libusb's list; we poll sysfs instead.
  if (usb.pollHotplug || !usb._supportedHotplugEvents() || !udevRunning(udevControl)) return null;
  const handler = () => onChange();
  usb.on('attach', handler);
  usb.on('detach', handler);
  usb.unrefHotplugEvents();
  return () => {
    usb.off('attach', handler);
    usb.off('detach', handler);
  };
}

export class HostUsbWatch<Device> {
  private readonly watchers = new Set<(devices: Device[]) => void>();
  private last: string | null = null;
  private lastList: Device[] = [];
  private stopSource: (() => void) | null = null;
  private poll: unknown = null;
  private settle: unknown = null;
  /** Whether the change source works (false: polling every HOST_USB_POLL_MS). */
  hotplug = false;

  constructor(
    private readonly list: () => Device[],
    private readonly source: HostUsbChangeSource = nodeUsbHotplug,
    private readonly timers: HostUsbWatchTimers = REAL_TIMERS,
    private readonly diag: (line: string) => void = () => undefined,
  ) {}

  /** Calls `listener` with the list now and on each change, until the returned function is called. */
  watch(listener: (devices: Device[]) => void): () => void {
    const first = this.watchers.size === 0;
    this.watchers.add(listener);
    if (first) {
      this.last = null;
      this.stopSource = this.source.start(() => this.changed());
      this.hotplug = this.stopSource !== null;
      this.poll = this.timers.setInterval(() => this.refresh(), this.hotplug ? HOST_USB_SLOW_POLL_MS : HOST_USB_POLL_MS);
      this.refresh();
    } else {
      this.send(listener, this.lastList);
    }
    return () => {
      if (!this.watchers.delete(listener) || this.watchers.size > 0) return;
      this.stopSource?.();
      this.stopSource = null;
      this.timers.clearInterval(this.poll);
      this.poll = null;
      if (this.settle !== null) this.timers.clearTimeout(this.settle);
      this.settle = null;
    };
  }

  /** Lists again and tells the watchers if anything differs (after attaching or detaching, say). */
  refresh(): void {
    if (this.watchers.size === 0) return;
    let devices: Device[];
    try {
      devices = this.list();
    } catch (e) {
      this.diag(`listing host USB devices failed: ${(e as Error).message}`);
      return;
    }
    const text = JSON.stringify(devices);
    if (text === this.last) return;
    this.last = text;
    this.lastList = devices;
    for (const w of [...this.watchers]) this.send(w, devices);
  }

  private changed(): void {
    if (this.settle !== null) this.timers.clearTimeout(this.settle);
    this.settle = this.timers.setTimeout(() => {
      this.settle = null;
      this.refresh();
    }, HOST_USB_SETTLE_MS);
  }

  private send(w: (devices: Device[]) => void, devices: Device[]): void {
    try {
      w(devices);
    } catch (e) {
      this.diag(`host-usb-devices watcher failed: ${(e as Error).message}`);
    }
  }
}
