// Validators for the USB calls (attachUsbDevice, detachUsbDevice, sendUsbKeys) and a VM spec's
// usb section, shared by the API and the CLI's control socket so both refuse the same input
// with the same words. Imports only the contract: the renderer may use them as the user types.
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
import { ApiError, type HostUsbAttachSpec, type UsbCaptureOptions, type UsbDeviceSpec, type UsbRuleSpec } from './contract';
import { USB_MAX_RULES, usbRuleFromJson } from './usb-rule';

/** A key event for the USB keyboard: a Keyboard/Keypad page usage (HID Usage Tables 10), down or up. */
export interface UsbKeyEvent {
  usage: number;
  down: boolean;
}

/** Root-hub ports of a VM's xHCI: 1..USB3_PORTS are USB 3, the rest USB 2. */
export const USB_PORT_COUNT = 8;
export const USB3_PORT_COUNT = 4;

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
const PATH_MAX = 4096;

function invalid(message: string): ApiError {
  return new ApiError('invalid-argument', message);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** One problem of a device spec: the field it is about ("" for the whole) and what is wrong. */
export interface UsbDeviceProblem {
  field: string;
  what: string;
}

/** The problems of a device spec (a VM config's usb.devices entry), in field order; [] when good. */
export function usbDeviceProblems(input: unknown): UsbDeviceProblem[] {
  if (!isRecord(input)) return [{ field: '', what: 'must be an object with a "kind"' }];
  const out: UsbDeviceProblem[] = [];
  const kind = input.kind;
  if (kind !== 'storage' && kind !== 'keyboard' && kind !== 'tablet' && kind !== 'serial') {
    return [{ field: 'kind', what: 'must be "storage", "keyboard", "tablet" or "serial"' }];
  }
  const allowed = kind === 'storage' ? ['kind', 'path', 'readOnly', 'port'] : kind === 'serial' ? ['kind', 'backend', 'port'] : ['kind', 'port'];
  for (const k of Object.keys(input)) if (!allowed.includes(k)) out.push({ field: k, what: `is not a setting of a ${kind}` });
  if (kind === 'storage') {
    const p = input.path;
    if (typeof p !== 'string' || p === '') out.push({ field: 'path', what: 'must be the path of an image file' });
    else if (p.length > PATH_MAX || p.includes('\0')) out.push({ field: 'path', what: `must be a file path of at most ${PATH_MAX} characters` });
    else if (!p.startsWith('/')) out.push({ field: 'path', what: 'must be an absolute path (starting with /)' });
    if (input.readOnly !== undefined && typeof input.readOnly !== 'boolean') out.push({ field: 'readOnly', what: 'must be true or false' });
  }
  if (kind === 'serial' && input.backend !== undefined) {
    const b = input.backend;
    if (typeof b !== 'string' || b.trim() === '' || b.length > PATH_MAX || b.includes('\0')) {
      out.push({ field: 'backend', what: 'must be a serial forward such as "pty", "tcp-listen:4555" or "unix:/path"' });
    } else if (b.trim() === 'ui') {
      out.push({ field: 'backend', what: 'cannot be "ui" (the app\'s console is for COM ports): use "pty", "tcp-listen:PORT", "unix:PATH" or "file:PATH"' });
    }
  }
  const port = input.port;
  if (port !== undefined) {
    if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > USB_PORT_COUNT) {
      out.push({ field: 'port', what: `must be a whole number from 1 to ${USB_PORT_COUNT}` });
    } else if (kind !== 'storage' && port <= USB3_PORT_COUNT) {
      out.push({ field: 'port', what: `must be a USB 2 port (${USB3_PORT_COUNT + 1} to ${USB_PORT_COUNT}) for a ${kind}; ${port} is a USB 3 port` });
    }
  }
  return out;
}

/** A device spec after validation: readOnly is filled in (the VMM's UsbDeviceConfig has this shape). */
export type UsbDeviceChoice = (
  | { kind: 'storage'; path: string; readOnly: boolean }
  | { kind: 'keyboard' }
  | { kind: 'tablet' }
  | { kind: 'serial'; backend: string }
) & { port?: number };

/** A validated copy of a device spec, or ApiError naming the first problem. */
export function parseUsbDeviceSpec(input: unknown): UsbDeviceChoice {
  const problems = usbDeviceProblems(input);
  if (problems.length > 0) {
    const p = problems[0];
    throw invalid(p.field === '' ? `The device ${p.what}.` : `Device ${p.field} ${p.what}.`);
  }
  const d = input as UsbDeviceSpec;
  const port = d.port === undefined ? {} : { port: d.port };
  return { ...usbDeviceChoice(d), ...port };
}

/** A valid spec with its defaults filled in (readOnly false, a serial port's backend "pty"), without its port. */
export function usbDeviceChoice(d: UsbDeviceSpec): UsbDeviceChoice {
  switch (d.kind) {
    case 'storage': return { kind: 'storage', path: d.path, readOnly: d.readOnly === true };
    case 'serial': return { kind: 'serial', backend: d.backend?.trim() || 'pty' };
    default: return { kind: d.kind };
  }
}

/** A root-hub port number, 1..8. */
export function parseUsbPort(input: unknown): number {
  if (typeof input !== 'number' || !Number.isInteger(input) || input < 1 || input > USB_PORT_COUNT) {
    throw invalid(`The USB port must be a whole number from 1 to ${USB_PORT_COUNT}.`);
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

/**
 * KeyboardEvent.code names and their Keyboard/Keypad usages (HID Usage Tables 10); the
 * emulated keyboard (devices/usb/hid-keyboard.ts) takes its names from here too.
 */
export const USB_KEY_CODES: Readonly<Record<string, number>> = (() => {
  const m: Record<string, number> = {};
  for (let i = 0; i < 26; i++) m[`Key${String.fromCharCode(65 + i)}`] = 0x04 + i;
  for (let i = 1; i <= 9; i++) m[`Digit${i}`] = 0x1d + i;
  m.Digit0 = 0x27;
  Object.assign(m, {
    Enter: 0x28, Escape: 0x29, Backspace: 0x2a, Tab: 0x2b, Space: 0x2c, Minus: 0x2d, Equal: 0x2e,
    BracketLeft: 0x2f, BracketRight: 0x30, Backslash: 0x31, IntlHash: 0x32, Semicolon: 0x33,
    Quote: 0x34, Backquote: 0x35, Comma: 0x36, Period: 0x37, Slash: 0x38, CapsLock: 0x39,
    PrintScreen: 0x46, ScrollLock: 0x47, Pause: 0x48, Insert: 0x49, Home: 0x4a, PageUp: 0x4b,
    Delete: 0x4c, End: 0x4d, PageDown: 0x4e, ArrowRight: 0x4f, ArrowLeft: 0x50, ArrowDown: 0x51,
    ArrowUp: 0x52, NumLock: 0x53, NumpadDivide: 0x54, NumpadMultiply: 0x55, NumpadSubtract: 0x56,
    NumpadAdd: 0x57, NumpadEnter: 0x58, NumpadDecimal: 0x63, IntlBackslash: 0x64,
    ContextMenu: 0x65, Power: 0x66, NumpadEqual: 0x67, Help: 0x75, Again: 0x79, Undo: 0x7a,
    Cut: 0x7b, Copy: 0x7c, Paste: 0x7d, Find: 0x7e, AudioVolumeMute: 0x7f, AudioVolumeUp: 0x80,
    AudioVolumeDown: 0x81, NumpadComma: 0x85, IntlRo: 0x87, KanaMode: 0x88, IntlYen: 0x89,
    Convert: 0x8a, NonConvert: 0x8b, Lang1: 0x90, Lang2: 0x91, Lang3: 0x92, Lang4: 0x93,
    ControlLeft: 0xe0, ShiftLeft: 0xe1, AltLeft: 0xe2, MetaLeft: 0xe3,
    ControlRight: 0xe4, ShiftRight: 0xe5, AltRight: 0xe6, MetaRight: 0xe7,
  });
  for (let i = 1; i <= 12; i++) m[`F${i}`] = 0x39 + i;
  for (let i = 13; i <= 24; i++) m[`F${i}`] = 0x68 + (i - 13);
  for (let i = 1; i <= 9; i++) m[`Numpad${i}`] = 0x58 + i;
  m.Numpad0 = 0x62;
  return Object.freeze(m);
})();

/** KeyboardEvent.code names, lower-cased. */
const CODE_NAMES: ReadonlyMap<string, number> = new Map(Object.entries(USB_KEY_CODES).map(([k, v]) => [k.toLowerCase(), v]));

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

/** attachHostUsbDevice's spec: `{ device: "1-1.4" | "BUS:ADDR" | "VID:PID", port?, force? }`. */
/** An auto-attach rule (UsbRuleSpec); the message names the bad field, e.g. "rule.match.vendorId must be ...". */
export function parseUsbRule(input: unknown): UsbRuleSpec {
  try {
    return usbRuleFromJson(input, 'rule');
  } catch (e) {
    throw invalid(`The ${(e as Error).message}.`);
  }
}

/** A rule's index in a VM's list (0-based). */
export function parseUsbRuleIndex(input: unknown): number {
  if (typeof input !== 'number' || !Number.isInteger(input) || input < 0 || input >= USB_MAX_RULES) {
    throw invalid(`A rule is named by its index in the VM's list, 0 to ${USB_MAX_RULES - 1}.`);
  }
  return input;
}

export function parseHostUsbAttachSpec(input: unknown): HostUsbAttachSpec {
  if (!isRecord(input)) throw invalid('A host USB device is given as { device: "1-1.4", port?: 1..8 }.');
  for (const k of Object.keys(input)) if (k !== 'device' && k !== 'port' && k !== 'force') throw invalid(`"${k}" is not a setting of a host USB device.`);
  const device = input.device;
  if (typeof device !== 'string' || !/^(\d{1,3}-\d{1,3}(\.\d{1,3}){0,6}|\d{1,3}:\d{1,3}|[0-9a-fA-F]{4}:[0-9a-fA-F]{4})$/.test(device)) {
    throw invalid('The device must name a host USB device by its port path ("1-1.4"), BUS:ADDR ("1:3") or VID:PID ("46f4:0001").');
  }
  const port = input.port;
  if (port !== undefined && (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > USB_PORT_COUNT)) {
    throw invalid(`The port must be a whole number from 1 to ${USB_PORT_COUNT}.`);
  }
  const force = input.force;
  if (force !== undefined && typeof force !== 'boolean') throw invalid('"force" is true or false.');
  return { device, ...(port === undefined ? {} : { port }), ...(force === true ? { force } : {}) };
}

/** Most data bytes a capture keeps per transfer event (main/vmm/shared/usb-messages.ts USB_CAPTURE_MAX_SNAP). */
export const USB_CAPTURE_MAX_SNAP_LENGTH = 16384;

/** startUsbCapture's options: { path?: absolute path | null, port?: 1..8 | null, snapLength?: 0..16384 }. */
export function parseUsbCaptureOptions(input: unknown): UsbCaptureOptions {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    throw invalid('A capture is { path, port?, snapLength? }: path an absolute file path (or null), port 1 to 8.');
  }
  const v = input as Record<string, unknown>;
  for (const k of Object.keys(v)) {
    if (k !== 'path' && k !== 'port' && k !== 'snapLength') throw invalid(`A capture has no field "${k}".`);
  }
  const path = v.path ?? null;
  if (path !== null && (typeof path !== 'string' || !path.startsWith('/') || path.includes('\0') || path.length > 4096)) {
    throw invalid('The capture file needs an absolute path.');
  }
  const port = v.port === undefined || v.port === null ? null : parseUsbPort(v.port);
  const snap = v.snapLength;
  if (snap !== undefined && (typeof snap !== 'number' || !Number.isInteger(snap) || snap < 0 || snap > USB_CAPTURE_MAX_SNAP_LENGTH)) {
    throw invalid(`The snap length must be a whole number of bytes from 0 to ${USB_CAPTURE_MAX_SNAP_LENGTH}.`);
  }
  return { path: path as string | null, port, ...(snap === undefined ? {} : { snapLength: snap as number }) };
}

/** A capture id from startUsbCapture. */
export function parseUsbCaptureId(input: unknown): number {
  if (typeof input !== 'number' || !Number.isInteger(input) || input < 1 || input > 0x7fffffff) {
    throw invalid('That is not a capture id (startUsbCapture gives one).');
  }
  return input;
}
