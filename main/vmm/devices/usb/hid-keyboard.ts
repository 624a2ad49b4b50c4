// A USB HID keyboard (HID 1.11, boot interface: subclass 1, protocol 1). Its report descriptor
// is the boot keyboard's 8-byte input report (modifiers, reserved, six key slots) and 1-byte LED
// output report, so boot and report protocol send the same bytes. Key events (HID usages from
// the Keyboard/Keypad page, or browser KeyboardEvent.code names) become reports in a bounded
// queue the guest drains one per interrupt IN transfer, so fast typing is not lost between
// polls. More than six keys held: every slot reads ErrorRollOver (HID Usage Tables 10).
// Runs on the machine thread.

import { UsbHidDevice, type HidTimers } from './hid';
import { USB_KEY_CODES } from '../../../api/usb-input';

/** The report descriptor (HID 1.11 appendix B.1 layout; keys 0..255 so F13-F24 and the Intl keys fit). */
export const KEYBOARD_REPORT_DESCRIPTOR = Uint8Array.of(
  0x05, 0x01, // Usage Page (Generic Desktop)
  0x09, 0x06, // Usage (Keyboard)
  0xa1, 0x01, // Collection (Application)
  0x05, 0x07, //   Usage Page (Keyboard/Keypad)
  0x19, 0xe0, //   Usage Minimum (Left Control)
  0x29, 0xe7, //   Usage Maximum (Right GUI)
  0x15, 0x00, //   Logical Minimum (0)
  0x25, 0x01, //   Logical Maximum (1)
  0x75, 0x01, //   Report Size (1)
  0x95, 0x08, //   Report Count (8)
  0x81, 0x02, //   Input (Data, Variable, Absolute): modifier bits
  0x95, 0x01, //   Report Count (1)
  0x75, 0x08, //   Report Size (8)
  0x81, 0x01, //   Input (Constant): reserved byte
  0x95, 0x05, //   Report Count (5)
  0x75, 0x01, //   Report Size (1)
  0x05, 0x08, //   Usage Page (LEDs)
  0x19, 0x01, //   Usage Minimum (Num Lock)
  0x29, 0x05, //   Usage Maximum (Kana)
  0x91, 0x02, //   Output (Data, Variable, Absolute): LEDs
  0x95, 0x01, //   Report Count (1)
  0x75, 0x03, //   Report Size (3)
  0x91, 0x01, //   Output (Constant): padding
  0x95, 0x06, //   Report Count (6)
  0x75, 0x08, //   Report Size (8)
  0x15, 0x00, //   Logical Minimum (0)
  0x26, 0xff, 0x00, // Logical Maximum (255)
  0x05, 0x07, //   Usage Page (Keyboard/Keypad)
  0x19, 0x00, //   Usage Minimum (0)
  0x2a, 0xff, 0x00, // Usage Maximum (255)
  0x81, 0x00, //   Input (Data, Array): key slots
  0xc0, //       End Collection
);

export const KEYBOARD_REPORT_LENGTH = 8;
/** Usage 0x01: more keys are down than the report can hold. */
export const ERROR_ROLL_OVER = 0x01;
/** Reports kept for the guest; beyond this, new state replaces the newest queued report. */
export const KEYBOARD_QUEUE_LIMIT = 64;

/** LED output report bits. */
export const KeyboardLed = { numLock: 1, capsLock: 2, scrollLock: 4, compose: 8, kana: 16 } as const;

/**
 * Browser KeyboardEvent.code names to Keyboard/Keypad page usages: the API's table
 * (main/api/usb-input.ts), where key names come in.
 */
export const KEY_CODE_USAGES: Readonly<Record<string, number>> = USB_KEY_CODES;

/** The usage for a KeyboardEvent.code name, or null for a name we do not know. */
export function usageForKeyCode(code: string): number | null {
  return Object.prototype.hasOwnProperty.call(KEY_CODE_USAGES, code) ? KEY_CODE_USAGES[code] : null;
}

export interface UsbKeyboardOptions {
  name?: string;
  speed?: 'full' | 'high';
  serial?: string;
  /** The machine's clock and timers, for idle-rate repeats (SeaBIOS key repeat). */
  timers?: HidTimers;
  /** Called when the guest sets the LEDs (SET_REPORT output). */
  onLeds?: (leds: number) => void;
}

export class UsbKeyboard extends UsbHidDevice {
  /** Modifier bits (usages 0xE0..0xE7). */
  private modifiers = 0;
  /** Non-modifier keys held, in press order. */
  private readonly held: number[] = [];
  private readonly queue: Uint8Array[] = [];
  /** The last report queued or sent: an event that changes nothing queues nothing. */
  private lastReport: Uint8Array = new Uint8Array(KEYBOARD_REPORT_LENGTH);
  private ledState = 0;
  private readonly onLeds?: (leds: number) => void;

  constructor(options: UsbKeyboardOptions = {}) {
    super({
      name: options.name ?? 'usb-kbd',
      speed: options.speed ?? 'full',
      vendorId: 0x1d6b, // Linux Foundation, as QEMU's emulated HID devices use
      productId: 0x0101,
      product: 'Porthole USB Keyboard',
      serial: options.serial,
      subclass: 1,
      protocol: 1,
      reportDescriptor: KEYBOARD_REPORT_DESCRIPTOR,
      maxPacketSize: KEYBOARD_REPORT_LENGTH,
      defaultIdle: 0,
      timers: options.timers,
    });
    this.onLeds = options.onLeds;
  }

  /** LED bits from the guest's last output report (KeyboardLed). */
  get leds(): number {
    return this.ledState;
  }
  /** Reports waiting for the guest. */
  get queuedReports(): number {
    return this.queue.length;
  }

  /** A key went down or up (a Keyboard/Keypad usage, 0x04..0xff). Returns false for a usage it ignores. */
  key(usage: number, down: boolean): boolean {
    if (!Number.isInteger(usage) || usage < 0x04 || usage > 0xff) return false;
    if (usage >= 0xe0 && usage <= 0xe7) {
      const bit = 1 << (usage - 0xe0);
      this.modifiers = down ? this.modifiers | bit : this.modifiers & ~bit;
    } else {
      const at = this.held.indexOf(usage);
      if (down && at < 0) this.held.push(usage);
      if (!down && at >= 0) this.held.splice(at, 1);
    }
    this.stateChanged();
    return true;
  }

  keyDown(usage: number): boolean {
    return this.key(usage, true);
  }
  keyUp(usage: number): boolean {
    return this.key(usage, false);
  }

  /** A key by its KeyboardEvent.code name ('KeyA', 'Enter', 'ShiftLeft'); false for an unknown name. */
  keyCode(code: string, down: boolean): boolean {
    const usage = usageForKeyCode(code);
    return usage === null ? false : this.key(usage, down);
  }

  /** Press and release each named key in turn (an API/CLI "type these keys"). False if a name is unknown (nothing sent). */
  tap(codes: string[]): boolean {
    const usages = codes.map(usageForKeyCode);
    if (usages.some((u) => u === null)) return false;
    for (const u of usages as number[]) {
      this.key(u, true);
      this.key(u, false);
    }
    return true;
  }

  /** Everything up (focus lost in the UI). */
  releaseAll(): void {
    this.modifiers = 0;
    this.held.length = 0;
    this.stateChanged();
  }

  protected override currentReport(): Uint8Array {
    const r = new Uint8Array(KEYBOARD_REPORT_LENGTH);
    r[0] = this.modifiers;
    if (this.held.length > 6) r.fill(ERROR_ROLL_OVER, 2);
    else r.set(this.held, 2);
    return r;
  }

  protected override takeReport(): Uint8Array | null {
    return this.queue.shift() ?? null;
  }

  protected override outputReport(): Uint8Array {
    return Uint8Array.of(this.ledState);
  }

  protected override setOutputReport(data: Uint8Array): boolean {
    this.ledState = data[0] & 0x1f;
    try {
      this.onLeds?.(this.ledState);
    } catch (err) {
      this.log(`LED callback: ${(err as Error).message}`);
    }
    return true;
  }

  protected override clearQueue(): void {
    this.queue.length = 0;
    // The next report the guest sees is the whole current state.
    this.lastReport = new Uint8Array(KEYBOARD_REPORT_LENGTH);
  }

  private stateChanged(): void {
    const report = this.currentReport();
    if (sameBytes(report, this.lastReport)) return;
    this.lastReport = report;
    // A guest that has not configured the keyboard is not listening: keep only the state.
    if (!this.configured) return;
    if (this.queue.length >= KEYBOARD_QUEUE_LIMIT) this.queue[this.queue.length - 1] = report;
    else this.queue.push(report);
    this.reportQueued();
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
