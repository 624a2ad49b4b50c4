// Validators for the USB calls (attachUsbDevice, detachUsbDevice, sendUsbKeys), shared by
// the API and the CLI's control socket so both refuse the same input with the same words.
// Pure: no Node or DOM imports (the renderer may use them while the user types).
//
// Key names (sendUsbKeys and `porthole keys`), matched without regard to case:
// - a printable character: "a", "A" (shift+a), "7", "%", "/", " " (US layout);
// - a KeyboardEvent.code name: "KeyA", "Digit1", "Enter", "ArrowUp", "F5", "NumpadAdd", "ShiftLeft"...;
// - a short name: ctrl, shift, alt, meta (also super, win, cmd), altgr, rctrl, rshift, ralt,
//   rmeta, enter (return), esc, backspace, tab, space, del (delete), ins (insert), home, end,
//   pgup (pageup), pgdn (pagedown), up, down, left, right, capslock, numlock, scrolllock,
//   prtsc (printscreen), pause, menu, f1..f24;
// - a chord joins names with "+": "ctrl+alt+Delete", "shift+Tab", "ctrl++". Its keys go down
//   in order and come up in reverse.
// Text mode ({ text }) types printable ASCII, "\n" (Enter) and "\t" (Tab) on a US layout.
import { ApiError } from './contract';
import { ConfigError, USB_PORTS, usbDeviceConfigFromJson, type UsbDeviceConfig } from '../vmm/config';
import { KEY_CODE_USAGES } from '../vmm/devices/usb/hid-keyboard';
import type { UsbKeyEvent } from '../vmm/shared/usb-messages';

export type { UsbKeyEvent };

export const USB_KEYS_LIMITS = {
  /** Key names (chords) per call. */
  names: 128,
  /** Keys in one chord. */
  chordKeys: 8,
  /** Characters of one name. */
  nameLength: 64,
  /** Characters per text call. */
  text: 1024,
} as const;

const SHIFT = 0xe1;

function invalid(message: string): ApiError {
  return new ApiError('invalid-argument', message);
}

/** A device to plug in, in a VM config's shape (usb.devices entries); a storage path must be absolute. */
export function parseUsbDeviceSpec(input: unknown): UsbDeviceConfig {
  let device: UsbDeviceConfig;
  try {
    device = usbDeviceConfigFromJson(input, 'device');
  } catch (e) {
    if (e instanceof ConfigError) throw invalid(`${e.message[0].toUpperCase()}${e.message.slice(1)}.`);
    throw e;
  }
  if (device.kind === 'storage' && !device.path.startsWith('/')) {
    throw invalid('Device.path must be an absolute path (starting with /).');
  }
  return device;
}

/** A root-hub port number, 1..8. */
export function parseUsbPort(input: unknown): number {
  if (typeof input !== 'number' || !Number.isInteger(input) || input < 1 || input > USB_PORTS) {
    throw invalid(`The USB port must be a whole number from 1 to ${USB_PORTS}.`);
  }
  return input;
}

/** Printable US-layout characters: [usage, shifted]. */
const CHARACTERS: ReadonlyMap<string, [number, boolean]> = (() => {
  const m = new Map<string, [number, boolean]>();
  for (let i = 0; i < 26; i++) {
    m.set(String.fromCharCode(97 + i), [0x04 + i, false]);
    m.set(String.fromCharCode(65 + i), [0x04 + i, true]);
  }
  const digits = '1234567890';
  const shifted = '!@#$%^&*()';
  for (let i = 0; i < 10; i++) {
    m.set(digits[i], [0x1e + i, false]);
    m.set(shifted[i], [0x1e + i, true]);
  }
  const pairs: [string, string, number][] = [
    ['-', '_', 0x2d], ['=', '+', 0x2e], ['[', '{', 0x2f], [']', '}', 0x30], ['\\', '|', 0x31],
    [';', ':', 0x33], ["'", '"', 0x34], ['`', '~', 0x35], [',', '<', 0x36], ['.', '>', 0x37], ['/', '?', 0x38],
  ];
  for (const [plain, shift, usage] of pairs) {
    m.set(plain, [usage, false]);
    m.set(shift, [usage, true]);
  }
  m.set(' ', [0x2c, false]);
  m.set('\n', [0x28, false]);
  m.set('\t', [0x2b, false]);
  return m;
})();

const SHORT_NAMES: Readonly<Record<string, number>> = {
  ctrl: 0xe0, control: 0xe0, shift: 0xe1, alt: 0xe2, meta: 0xe3, super: 0xe3, win: 0xe3, cmd: 0xe3, gui: 0xe3,
  rctrl: 0xe4, rshift: 0xe5, ralt: 0xe6, altgr: 0xe6, rmeta: 0xe7,
  enter: 0x28, return: 0x28, esc: 0x29, escape: 0x29, backspace: 0x2a, tab: 0x2b, space: 0x2c,
  capslock: 0x39, prtsc: 0x46, printscreen: 0x46, scrolllock: 0x47, pause: 0x48, break: 0x48,
  ins: 0x49, insert: 0x49, home: 0x4a, pgup: 0x4b, pageup: 0x4b, del: 0x4c, delete: 0x4c, end: 0x4d,
  pgdn: 0x4e, pagedown: 0x4e, right: 0x4f, left: 0x50, down: 0x51, up: 0x52, numlock: 0x53, menu: 0x65,
};

/** KeyboardEvent.code names, lower-cased. */
const CODE_NAMES: ReadonlyMap<string, number> = new Map(Object.entries(KEY_CODE_USAGES).map(([k, v]) => [k.toLowerCase(), v]));

/** The usage of one key name and whether it implies shift, or null for a name we do not know. */
export function usbKeyUsage(name: string): [number, boolean] | null {
  if (name.length === 1) return CHARACTERS.get(name) ?? null;
  const lower = name.toLowerCase();
  const usage = SHORT_NAMES[lower] ?? CODE_NAMES.get(lower);
  return usage === undefined ? null : [usage, false];
}

/** Splits a chord on "+", where a "+" at the end (or alone) is the key itself: "ctrl++". */
function chordParts(name: string): string[] {
  return name.split(/\+(?=.)/);
}

function chordEvents(name: string, where: string): UsbKeyEvent[] {
  if (name.length === 0 || name.length > USB_KEYS_LIMITS.nameLength) {
    throw invalid(`${where} must be a key name of 1 to ${USB_KEYS_LIMITS.nameLength} characters.`);
  }
  const parts = chordParts(name);
  if (parts.length > USB_KEYS_LIMITS.chordKeys) throw invalid(`${where} holds more than ${USB_KEYS_LIMITS.chordKeys} keys at once.`);
  const usages: number[] = [];
  for (const part of parts) {
    const found = part === '' ? null : usbKeyUsage(part);
    if (found === null) {
      throw invalid(`${where}: "${part.slice(0, USB_KEYS_LIMITS.nameLength)}" is not a key name (e.g. "a", "Enter", "F5", "ctrl+alt+Delete").`);
    }
    const [usage, shifted] = found;
    if (shifted && !usages.includes(SHIFT)) usages.push(SHIFT);
    if (!usages.includes(usage)) usages.push(usage);
  }
  return [...usages.map((usage) => ({ usage, down: true })), ...usages.reverse().map((usage) => ({ usage, down: false }))];
}

function textEvents(text: string): UsbKeyEvent[] {
  if (text.length > USB_KEYS_LIMITS.text) throw invalid(`Text is limited to ${USB_KEYS_LIMITS.text} characters per call.`);
  const events: UsbKeyEvent[] = [];
  for (let i = 0; i < text.length; i++) {
    const found = CHARACTERS.get(text[i]);
    if (found === undefined) {
      const code = text.codePointAt(i) as number;
      throw invalid(`Character ${i + 1} of the text (U+${code.toString(16).toUpperCase().padStart(4, '0')}) cannot be typed on a US keyboard layout.`);
    }
    const [usage, shifted] = found;
    if (shifted) events.push({ usage: SHIFT, down: true });
    events.push({ usage, down: true }, { usage, down: false });
    if (shifted) events.push({ usage: SHIFT, down: false });
  }
  return events;
}

/** Key names (["a", "ctrl+alt+Delete"]) or { text: "hello\n" }, as key events in order. */
export function parseUsbKeys(input: unknown): UsbKeyEvent[] {
  if (Array.isArray(input)) {
    if (input.length === 0) throw invalid('Give at least one key name.');
    if (input.length > USB_KEYS_LIMITS.names) throw invalid(`At most ${USB_KEYS_LIMITS.names} key names per call.`);
    return input.flatMap((name, i) => {
      if (typeof name !== 'string') throw invalid(`Key ${i + 1} must be a key name such as "a" or "Enter".`);
      return chordEvents(name, `Key ${i + 1}`);
    });
  }
  if (typeof input === 'object' && input !== null) {
    const keys = Object.keys(input);
    const text = (input as { text?: unknown }).text;
    if (keys.length === 1 && keys[0] === 'text' && typeof text === 'string') {
      if (text.length === 0) throw invalid('The text is empty.');
      return textEvents(text);
    }
  }
  throw invalid('Keys must be a list of key names (["ctrl+alt+Delete", "a", "Enter"]) or { "text": "..." }.');
}
