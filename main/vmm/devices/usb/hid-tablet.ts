// A USB HID tablet: an absolute pointer (X and Y 0..32767), five buttons and a wheel, like
// QEMU's usb-tablet, which Linux's hid-generic takes as an absolute mouse (no boot interface:
// firmware does not use it). Report (6 bytes): buttons (bit 0 left, 1 right, 2 middle, 3 back,
// 4 forward), X (16 bit LE), Y (16 bit LE), wheel (signed 8 bit, relative).
// Moves coalesce: while the guest has no transfer waiting, a move replaces the position in the
// newest queued report if its buttons are the same; a button change always gets its own
// report so clicks are never lost; wheel steps add up. Runs on the machine thread.

import { UsbHidDevice, type HidTimers } from './hid';

export const TABLET_REPORT_DESCRIPTOR = Uint8Array.of(
  0x05, 0x01, // Usage Page (Generic Desktop)
  0x09, 0x02, // Usage (Mouse)
  0xa1, 0x01, // Collection (Application)
  0x09, 0x01, //   Usage (Pointer)
  0xa1, 0x00, //   Collection (Physical)
  0x05, 0x09, //     Usage Page (Button)
  0x19, 0x01, //     Usage Minimum (1)
  0x29, 0x05, //     Usage Maximum (5)
  0x15, 0x00, //     Logical Minimum (0)
  0x25, 0x01, //     Logical Maximum (1)
  0x95, 0x05, //     Report Count (5)
  0x75, 0x01, //     Report Size (1)
  0x81, 0x02, //     Input (Data, Variable, Absolute): buttons
  0x95, 0x01, //     Report Count (1)
  0x75, 0x03, //     Report Size (3)
  0x81, 0x01, //     Input (Constant): padding
  0x05, 0x01, //     Usage Page (Generic Desktop)
  0x09, 0x30, //     Usage (X)
  0x09, 0x31, //     Usage (Y)
  0x15, 0x00, //     Logical Minimum (0)
  0x26, 0xff, 0x7f, // Logical Maximum (32767)
  0x35, 0x00, //     Physical Minimum (0)
  0x46, 0xff, 0x7f, // Physical Maximum (32767)
  0x75, 0x10, //     Report Size (16)
  0x95, 0x02, //     Report Count (2)
  0x81, 0x02, //     Input (Data, Variable, Absolute): X, Y
  0x09, 0x38, //     Usage (Wheel)
  0x15, 0x81, //     Logical Minimum (-127)
  0x25, 0x7f, //     Logical Maximum (127)
  0x35, 0x00, //     Physical Minimum (0): no physical range,
  0x45, 0x00, //     Physical Maximum (0)  so the logical one applies
  0x75, 0x08, //     Report Size (8)
  0x95, 0x01, //     Report Count (1)
  0x81, 0x06, //     Input (Data, Variable, Relative): wheel
  0xc0, //       End Collection
  0xc0, //     End Collection
);

export const TABLET_REPORT_LENGTH = 6;
export const TABLET_MAX_COORDINATE = 0x7fff;
export const TABLET_QUEUE_LIMIT = 32;

export const TabletButton = { left: 1, right: 2, middle: 4, back: 8, forward: 16 } as const;

export interface TabletState {
  x: number;
  y: number;
  buttons: number;
}

interface PendingReport extends TabletState {
  wheel: number;
}

export interface UsbTabletOptions {
  name?: string;
  speed?: 'full' | 'high';
  serial?: string;
  /** The machine's clock and timers, for idle-rate repeats. */
  timers?: HidTimers;
}

function clampCoordinate(v: number): number {
  if (!Number.isFinite(v)) return 0;
  return Math.max(0, Math.min(TABLET_MAX_COORDINATE, Math.round(v)));
}

export class UsbTablet extends UsbHidDevice {
  private state: TabletState = { x: 0, y: 0, buttons: 0 };
  private readonly queue: PendingReport[] = [];

  constructor(options: UsbTabletOptions = {}) {
    super({
      name: options.name ?? 'usb-tablet',
      speed: options.speed ?? 'full',
      vendorId: 0x1d6b,
      productId: 0x0102,
      product: 'Porthole USB Tablet',
      serial: options.serial,
      subclass: 0,
      protocol: 0,
      reportDescriptor: TABLET_REPORT_DESCRIPTOR,
      maxPacketSize: 8,
      defaultIdle: 0,
      timers: options.timers,
    });
  }

  get position(): TabletState {
    return { ...this.state };
  }
  get queuedReports(): number {
    return this.queue.length;
  }

  /** Moves to (x, y) in 0..32767 (clamped). */
  move(x: number, y: number): void {
    this.update({ x: clampCoordinate(x), y: clampCoordinate(y), buttons: this.state.buttons }, 0);
  }

  /** Moves to a point given as fractions 0..1 of the screen (a UI pointer event). */
  moveNormalized(fx: number, fy: number): void {
    this.move(fx * TABLET_MAX_COORDINATE, fy * TABLET_MAX_COORDINATE);
  }

  /** Sets all button bits at once (TabletButton). */
  setButtons(buttons: number): void {
    this.update({ ...this.state, buttons: (buttons >>> 0) & 0x1f }, 0);
  }

  button(button: number, down: boolean): void {
    const bits = (button >>> 0) & 0x1f;
    this.setButtons(down ? this.state.buttons | bits : this.state.buttons & ~bits);
  }

  /** Wheel steps: positive away from the user. */
  wheel(steps: number): void {
    if (!Number.isFinite(steps)) return;
    this.update(this.state, Math.max(-0x7fff, Math.min(0x7fff, Math.trunc(steps))));
  }

  /** Position, buttons and wheel in one event. */
  pointer(event: { x: number; y: number; buttons?: number; wheel?: number }): void {
    const buttons = event.buttons === undefined ? this.state.buttons : (event.buttons >>> 0) & 0x1f;
    const wheel = event.wheel !== undefined && Number.isFinite(event.wheel) ? Math.trunc(event.wheel) : 0;
    this.update({ x: clampCoordinate(event.x), y: clampCoordinate(event.y), buttons }, Math.max(-0x7fff, Math.min(0x7fff, wheel)));
  }

  protected override currentReport(): Uint8Array {
    return encode({ ...this.state, wheel: 0 });
  }

  protected override takeReport(): Uint8Array | null {
    const next = this.queue[0];
    if (!next) return null;
    // A wheel larger than one report can carry is sent over several reports.
    const wheel = Math.max(-127, Math.min(127, next.wheel));
    next.wheel -= wheel;
    if (next.wheel === 0) this.queue.shift();
    return encode({ ...next, wheel });
  }

  protected override clearQueue(): void {
    this.queue.length = 0;
  }

  private update(next: TabletState, wheel: number): void {
    const changed = next.x !== this.state.x || next.y !== this.state.y || next.buttons !== this.state.buttons;
    this.state = { ...next };
    if ((!changed && wheel === 0) || !this.configured) return;
    const last = this.queue[this.queue.length - 1];
    // Coalesce into the newest unsent report unless a button changed (a click must be seen).
    // The first queued report may be partly sent (its wheel); it still takes the new position.
    if (last && (last.buttons === next.buttons || this.queue.length >= TABLET_QUEUE_LIMIT)) {
      last.x = next.x;
      last.y = next.y;
      last.buttons = next.buttons;
      last.wheel = Math.max(-0x7fff, Math.min(0x7fff, last.wheel + wheel));
    } else {
      this.queue.push({ ...next, wheel });
    }
    this.reportQueued();
  }
}

function encode(r: PendingReport): Uint8Array {
  const out = new Uint8Array(TABLET_REPORT_LENGTH);
  out[0] = r.buttons & 0x1f;
  out[1] = r.x & 0xff;
  out[2] = r.x >>> 8;
  out[3] = r.y & 0xff;
  out[4] = r.y >>> 8;
  out[5] = r.wheel & 0xff;
  return out;
}
