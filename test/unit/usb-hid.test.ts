// The USB HID keyboard and tablet: descriptors as usbhid reads them, class requests, and the
// report bytes for input events.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  ERROR_ROLL_OVER,
  KEYBOARD_QUEUE_LIMIT,
  KEYBOARD_REPORT_DESCRIPTOR,
  UsbKeyboard,
  usageForKeyCode,
} from '../../main/vmm/devices/usb/hid-keyboard';
import { TABLET_REPORT_DESCRIPTOR, TabletButton, UsbTablet } from '../../main/vmm/devices/usb/hid-tablet';
import type { UsbDevice } from '../../main/vmm/devices/usb/usb-device';
import {
  enumerate,
  getDescriptor,
  makeTransfer,
  RecordingPort,
  request,
  splitDescriptors,
  submit,
  type Submitted,
} from '../helpers/usb';

/** Walks a report descriptor's items (HID 1.11 6.2.2) and sums the report bits per main item kind. */
function parseReportDescriptor(d: Uint8Array) {
  let at = 0;
  let depth = 0;
  let size = 0;
  let count = 0;
  const bits = { input: 0, output: 0, feature: 0 };
  let maxDepth = 0;
  while (at < d.length) {
    const prefix = d[at];
    assert.notEqual(prefix, 0xfe, 'no long items');
    const len = [0, 1, 2, 4][prefix & 3];
    assert.ok(at + 1 + len <= d.length, `item at ${at} runs past the end`);
    let data = 0;
    for (let i = 0; i < len; i++) data |= d[at + 1 + i] << (8 * i);
    const tag = prefix & 0xfc;
    if (tag === 0x74) size = data; // Report Size
    if (tag === 0x94) count = data; // Report Count
    if (tag === 0x84) assert.fail('no report IDs');
    if (tag === 0x80) bits.input += size * count;
    if (tag === 0x90) bits.output += size * count;
    if (tag === 0xb0) bits.feature += size * count;
    if (tag === 0xa0) maxDepth = Math.max(maxDepth, ++depth);
    if (tag === 0xc0) depth--;
    assert.ok(depth >= 0, 'End Collection without Collection');
    at += 1 + len;
  }
  assert.equal(depth, 0, 'collections balanced');
  return { ...bits, maxDepth };
}

function configuredDevice<T extends UsbDevice>(dev: T, port = new RecordingPort()): T {
  dev.attach(port);
  enumerate(dev);
  return dev;
}

const interruptIn = (len = 8) => makeTransfer(1, true, 'interrupt', new Uint8Array(len));

function readReport(dev: UsbDevice, len = 8): Submitted {
  return submit(dev, interruptIn(len));
}

function reportBytes(s: Submitted): number[] {
  assert.equal(s.transfer.status, 'ok');
  return [...s.transfer.data.subarray(0, s.transfer.actualLength)];
}

/** Drains every queued report. */
function drain(dev: UsbDevice, len = 8): number[][] {
  const out: number[][] = [];
  for (;;) {
    const s = readReport(dev, len);
    if (s.transfer.status === 'pending') {
      dev.cancel(s.transfer);
      return out;
    }
    out.push(reportBytes(s));
  }
}

test('keyboard descriptors: boot keyboard interface, HID descriptor, interrupt IN endpoint, report descriptor', () => {
  const kbd = new UsbKeyboard();
  kbd.attach(new RecordingPort());
  const { device, config } = enumerate(kbd);
  assert.equal(device[7], 8, 'full-speed EP0 of 8 bytes');
  assert.equal(device[4], 0, 'class per interface');
  const parts = splitDescriptors(config);
  assert.deepEqual(parts.map((p) => p[1]), [2, 4, 0x21, 5]);
  assert.equal(config[2] | (config[3] << 8), config.length);
  assert.equal(config[4], 1, 'one interface');
  assert.equal(config[7] & 0x20, 0x20, 'remote wakeup');
  assert.deepEqual([...parts[1]].slice(0, 8), [9, 4, 0, 0, 1, 3, 1, 1]);
  const hid = parts[2];
  assert.deepEqual([...hid.subarray(0, 7)], [9, 0x21, 0x11, 0x01, 0, 1, 0x22]);
  assert.equal(hid[7] | (hid[8] << 8), KEYBOARD_REPORT_DESCRIPTOR.length);
  assert.deepEqual([...parts[3]], [7, 5, 0x81, 3, 8, 0, 10]);
  // usbhid reads the report descriptor from the interface (bmRequestType 0x81).
  const rd = request(kbd, 0x81, 0x06, 0x2200, 0, KEYBOARD_REPORT_DESCRIPTOR.length);
  assert.deepEqual(rd.data, KEYBOARD_REPORT_DESCRIPTOR);
  assert.deepEqual([...request(kbd, 0x81, 0x06, 0x2100, 0, 9).data], [...hid]);
  assert.equal(request(kbd, 0x81, 0x06, 0x2200, 1, 64).status, 'stall', 'no interface 1');
  assert.equal(request(kbd, 0x81, 0x06, 0x2300, 0, 64).status, 'stall', 'no physical descriptor');
  const layout = parseReportDescriptor(KEYBOARD_REPORT_DESCRIPTOR);
  assert.deepEqual({ input: layout.input, output: layout.output, feature: layout.feature }, { input: 64, output: 8, feature: 0 });
  const product = getDescriptor(kbd, 3, device[15], 255).data;
  assert.equal(Buffer.from(product.subarray(2)).toString('utf16le'), 'Porthole USB Keyboard');
  // A high-speed keyboard: 64-byte EP0 and an interval in microframe exponent form.
  const hs = new UsbKeyboard({ speed: 'high' });
  hs.attach(new RecordingPort());
  const hsDesc = enumerate(hs);
  assert.equal(hsDesc.device[7], 64);
  assert.deepEqual([...splitDescriptors(hsDesc.config)[3]], [7, 5, 0x81, 3, 8, 0, 7]);
  assert.equal(hs.speed, 'high');
});

test('keyboard reports for a key sequence with modifiers, in order, nothing lost between polls', () => {
  const kbd = configuredDevice(new UsbKeyboard());
  const waiting = readReport(kbd);
  assert.equal(waiting.transfer.status, 'pending', 'no key: NAK');
  assert.equal(kbd.keyCode('ShiftLeft', true), true);
  assert.deepEqual(reportBytes(waiting), [0x02, 0, 0, 0, 0, 0, 0, 0]);
  // Typing "Hi!" quickly with no transfer waiting: every report is queued.
  kbd.keyCode('KeyH', true);
  kbd.keyCode('KeyH', false);
  kbd.keyCode('ShiftLeft', false);
  kbd.keyCode('KeyI', true);
  kbd.keyCode('KeyI', false);
  kbd.keyCode('ShiftRight', true);
  kbd.keyCode('Digit1', true);
  kbd.keyCode('Digit1', false);
  kbd.keyCode('ShiftRight', false);
  assert.deepEqual(drain(kbd), [
    [0x02, 0, 0x0b, 0, 0, 0, 0, 0],
    [0x02, 0, 0, 0, 0, 0, 0, 0],
    [0x00, 0, 0, 0, 0, 0, 0, 0],
    [0x00, 0, 0x0c, 0, 0, 0, 0, 0],
    [0x00, 0, 0, 0, 0, 0, 0, 0],
    [0x20, 0, 0, 0, 0, 0, 0, 0],
    [0x20, 0, 0x1e, 0, 0, 0, 0, 0],
    [0x20, 0, 0, 0, 0, 0, 0, 0],
    [0x00, 0, 0, 0, 0, 0, 0, 0],
  ]);
  // Keys held together keep their press order; releasing one closes the gap.
  kbd.keyCode('KeyA', true);
  kbd.keyCode('KeyB', true);
  kbd.keyCode('KeyC', true);
  kbd.keyCode('KeyB', false);
  kbd.keyCode('KeyB', false); // already up: no report
  kbd.keyCode('ControlLeft', true);
  kbd.keyCode('AltRight', true);
  kbd.keyCode('MetaLeft', true);
  assert.deepEqual(drain(kbd), [
    [0, 0, 0x04, 0, 0, 0, 0, 0],
    [0, 0, 0x04, 0x05, 0, 0, 0, 0],
    [0, 0, 0x04, 0x05, 0x06, 0, 0, 0],
    [0, 0, 0x04, 0x06, 0, 0, 0, 0],
    [0x01, 0, 0x04, 0x06, 0, 0, 0, 0],
    [0x41, 0, 0x04, 0x06, 0, 0, 0, 0],
    [0x49, 0, 0x04, 0x06, 0, 0, 0, 0],
  ]);
  kbd.releaseAll();
  assert.deepEqual(drain(kbd), [[0, 0, 0, 0, 0, 0, 0, 0]]);
  assert.equal(kbd.tap(['KeyX', 'Enter']), true);
  assert.deepEqual(drain(kbd), [
    [0, 0, 0x1b, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0x28, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0],
  ]);
  assert.equal(kbd.tap(['KeyX', 'NoSuchKey']), false);
  assert.deepEqual(drain(kbd), [], 'an unknown name sends nothing');
  assert.equal(kbd.key(0x02, true), false, 'ErrorPostFail is not a key');
  assert.equal(kbd.key(0x100, true), false);
  assert.equal(kbd.keyCode('toString', true), false);
});

test('keyboard rollover: a seventh key makes every slot ErrorRollOver, modifiers still reported', () => {
  const kbd = configuredDevice(new UsbKeyboard());
  kbd.keyCode('ShiftLeft', true);
  for (const k of ['KeyQ', 'KeyW', 'KeyE', 'KeyR', 'KeyT', 'KeyY']) kbd.keyCode(k, true);
  drain(kbd);
  kbd.keyCode('KeyU', true);
  assert.deepEqual(drain(kbd), [[0x02, 0, ERROR_ROLL_OVER, 1, 1, 1, 1, 1]]);
  kbd.keyCode('KeyI', true);
  assert.deepEqual(drain(kbd), [], 'still rolled over: same report, not repeated');
  kbd.keyCode('KeyQ', false);
  kbd.keyCode('KeyW', false);
  assert.deepEqual(drain(kbd), [[0x02, 0, 0x08, 0x15, 0x17, 0x1c, 0x18, 0x0c]]);
});

test('keyboard queue is bounded: the newest state survives a flood', () => {
  const kbd = configuredDevice(new UsbKeyboard());
  for (let i = 0; i < 500; i++) {
    kbd.keyCode('KeyA', true);
    kbd.keyCode('KeyA', false);
  }
  kbd.keyCode('KeyZ', true);
  assert.equal(kbd.queuedReports, KEYBOARD_QUEUE_LIMIT);
  const reports = drain(kbd);
  assert.equal(reports.length, KEYBOARD_QUEUE_LIMIT);
  assert.deepEqual(reports[reports.length - 1], [0, 0, 0x1d, 0, 0, 0, 0, 0]);
});

test('keyboard before configuration keeps state only; reset drops queued reports', () => {
  const kbd = new UsbKeyboard();
  kbd.attach(new RecordingPort());
  kbd.keyCode('KeyA', true);
  kbd.keyCode('KeyA', false);
  enumerate(kbd);
  assert.deepEqual(drain(kbd), []);
  kbd.keyCode('KeyB', true);
  const pending = readReport(kbd);
  assert.equal(pending.transfer.status, 'ok');
  kbd.keyCode('KeyB', false);
  kbd.keyCode('KeyC', true);
  assert.equal(kbd.queuedReports, 2);
  const waiting = makeTransfer(1, true, 'interrupt', new Uint8Array(8));
  kbd.reset();
  assert.equal(kbd.queuedReports, 0);
  enumerate(kbd);
  kbd.submit(waiting, () => {});
  kbd.keyCode('KeyD', true);
  assert.deepEqual([...waiting.data], [0, 0, 0x06, 0x07, 0, 0, 0, 0], 'the whole current state after a reset');
});

test('keyboard class requests: GET_REPORT, SET_REPORT LEDs, GET/SET_IDLE, GET/SET_PROTOCOL', () => {
  const leds: number[] = [];
  const kbd = configuredDevice(new UsbKeyboard({ onLeds: (l) => leds.push(l) }));
  kbd.keyCode('ControlRight', true);
  kbd.keyCode('KeyZ', true);
  assert.deepEqual([...request(kbd, 0xa1, 0x01, 0x0100, 0, 8).data], [0x10, 0, 0x1d, 0, 0, 0, 0, 0]);
  assert.equal(request(kbd, 0xa1, 0x01, 0x0300, 0, 8).status, 'stall', 'no feature report');
  assert.equal(request(kbd, 0xa1, 0x01, 0x0101, 0, 8).status, 'stall', 'no report ID 1');
  // LEDs: Caps Lock and Num Lock on, then off.
  assert.equal(request(kbd, 0x21, 0x09, 0x0200, 0, 1, Uint8Array.of(0x03)).status, 'ok');
  assert.equal(kbd.leds, 3);
  assert.deepEqual([...request(kbd, 0xa1, 0x01, 0x0200, 0, 1).data], [3]);
  assert.equal(request(kbd, 0x21, 0x09, 0x0200, 0, 1, Uint8Array.of(0xe0)).status, 'ok');
  assert.equal(kbd.leds, 0, 'padding bits ignored');
  assert.deepEqual(leds, [3, 0]);
  assert.equal(request(kbd, 0x21, 0x09, 0x0200, 0, 0).status, 'stall', 'an empty output report');
  assert.equal(request(kbd, 0x21, 0x09, 0x0100, 0, 8, new Uint8Array(8)).status, 'stall', 'input reports are not set');
  // Idle.
  assert.deepEqual([...request(kbd, 0xa1, 0x02, 0, 0, 1).data], [0]);
  assert.equal(request(kbd, 0x21, 0x0a, 0x7d00, 0, 0).status, 'ok');
  assert.deepEqual([...request(kbd, 0xa1, 0x02, 0, 0, 1).data], [0x7d]);
  assert.equal(request(kbd, 0x21, 0x0a, 0x7d01, 0, 0).status, 'stall', 'no report ID 1');
  // Protocol: report by default, boot after SET_PROTOCOL(0); the boot report has the same bytes.
  assert.deepEqual([...request(kbd, 0xa1, 0x03, 0, 0, 1).data], [1]);
  assert.equal(request(kbd, 0x21, 0x0b, 0, 0, 0).status, 'ok');
  assert.deepEqual([...request(kbd, 0xa1, 0x03, 0, 0, 1).data], [0]);
  assert.equal(kbd.protocol, 0);
  drain(kbd);
  kbd.keyCode('KeyZ', false);
  assert.deepEqual(drain(kbd), [[0x10, 0, 0, 0, 0, 0, 0, 0]]);
  assert.equal(request(kbd, 0x21, 0x0b, 2, 0, 0).status, 'stall');
  assert.equal(request(kbd, 0x21, 0x0b, 1, 0, 0).status, 'ok');
  assert.equal(kbd.protocol, 1);
  // A bus reset returns to report protocol and the default idle rate.
  request(kbd, 0x21, 0x0b, 0, 0, 0);
  request(kbd, 0x21, 0x0a, 0x1000, 0, 0);
  kbd.reset();
  enumerate(kbd);
  assert.equal(kbd.protocol, 1);
  assert.equal(kbd.idle, 0);
  // Requests to another interface, or class requests before SET_CONFIGURATION, STALL.
  assert.equal(request(kbd, 0xa1, 0x03, 0, 1, 1).status, 'stall');
  kbd.reset();
  assert.equal(request(kbd, 0xa1, 0x03, 0, 0, 1).status, 'stall');
});

test('keyboard interrupt IN: a buffer smaller than the report babbles; wakeup only when enabled', () => {
  const port = new RecordingPort();
  const kbd = configuredDevice(new UsbKeyboard(), port);
  kbd.keyCode('KeyA', true);
  const small = readReport(kbd, 4);
  assert.equal(small.transfer.status, 'babble');
  assert.equal(port.wakeups, 0);
  assert.equal(request(kbd, 0x00, 0x03, 1, 0, 0).status, 'ok');
  kbd.keyCode('KeyA', false);
  assert.equal(port.wakeups, 1);
  // Interrupt OUT and bulk transfers have no endpoint.
  assert.equal(submit(kbd, makeTransfer(1, false, 'interrupt', new Uint8Array(1))).transfer.status, 'stall');
  assert.equal(submit(kbd, makeTransfer(2, true, 'interrupt', new Uint8Array(8))).transfer.status, 'stall');
});

test('key code names map to Keyboard/Keypad usages', () => {
  const expect: Record<string, number> = {
    KeyA: 0x04, KeyZ: 0x1d, Digit1: 0x1e, Digit0: 0x27, Enter: 0x28, Escape: 0x29, Backspace: 0x2a,
    Tab: 0x2b, Space: 0x2c, Slash: 0x38, CapsLock: 0x39, F1: 0x3a, F12: 0x45, F13: 0x68, F24: 0x73,
    ArrowRight: 0x4f, ArrowUp: 0x52, NumLock: 0x53, Numpad1: 0x59, Numpad0: 0x62, NumpadDecimal: 0x63,
    IntlBackslash: 0x64, ControlLeft: 0xe0, ShiftLeft: 0xe1, AltLeft: 0xe2, MetaLeft: 0xe3,
    ControlRight: 0xe4, ShiftRight: 0xe5, AltRight: 0xe6, MetaRight: 0xe7, Delete: 0x4c, PageDown: 0x4e,
  };
  for (const [code, usage] of Object.entries(expect)) assert.equal(usageForKeyCode(code), usage, code);
  assert.equal(usageForKeyCode('keya'), null);
  assert.equal(usageForKeyCode('__proto__'), null);
});

test('tablet descriptors: non-boot HID interface, report descriptor with absolute X/Y 0..32767', () => {
  const tab = new UsbTablet();
  tab.attach(new RecordingPort());
  const { config } = enumerate(tab);
  const parts = splitDescriptors(config);
  assert.deepEqual([...parts[1]].slice(0, 8), [9, 4, 0, 0, 1, 3, 0, 0]);
  assert.equal(parts[2][7] | (parts[2][8] << 8), TABLET_REPORT_DESCRIPTOR.length);
  assert.deepEqual(request(tab, 0x81, 0x06, 0x2200, 0, 255).data, TABLET_REPORT_DESCRIPTOR);
  const layout = parseReportDescriptor(TABLET_REPORT_DESCRIPTOR);
  assert.equal(layout.input, 48);
  assert.equal(layout.output, 0);
  assert.equal(layout.maxDepth, 2);
  const d = TABLET_REPORT_DESCRIPTOR;
  const logicalMax = d.findIndex((b, i) => b === 0x26 && d[i + 1] === 0xff && d[i + 2] === 0x7f);
  assert.ok(logicalMax > 0, 'Logical Maximum 32767');
  assert.equal(request(tab, 0xa1, 0x03, 0, 0, 1).status, 'stall', 'GET_PROTOCOL is for boot interfaces');
  assert.equal(request(tab, 0x21, 0x0b, 0, 0, 0).status, 'stall');
  assert.equal(request(tab, 0x21, 0x09, 0x0200, 0, 1, Uint8Array.of(1)).status, 'stall', 'no output report');
});

test('tablet reports: position, buttons, wheel; moves coalesce while nothing is waiting, clicks never do', () => {
  const tab = configuredDevice(new UsbTablet());
  const waiting = readReport(tab);
  assert.equal(waiting.transfer.status, 'pending');
  tab.move(0x1234, 0x7fff);
  assert.deepEqual(reportBytes(waiting), [0, 0x34, 0x12, 0xff, 0x7f, 0]);
  // Three moves with no transfer waiting: one report, the last position.
  tab.move(100, 200);
  tab.move(300, 400);
  tab.move(500, 600);
  assert.equal(tab.queuedReports, 1);
  assert.deepEqual(drain(tab), [[0, 0xf4, 0x01, 0x58, 0x02, 0]]);
  // A click between moves stays visible.
  tab.move(10, 10);
  tab.button(TabletButton.left, true);
  tab.move(20, 20);
  tab.button(TabletButton.left, false);
  tab.move(30, 30);
  assert.deepEqual(drain(tab), [
    [0, 10, 0, 10, 0, 0],
    [1, 20, 0, 20, 0, 0],
    [0, 30, 0, 30, 0, 0],
  ]);
  // Wheel steps add up; more than 127 goes out over several reports.
  tab.wheel(2);
  tab.wheel(-5);
  assert.deepEqual(drain(tab), [[0, 30, 0, 30, 0, 0xfd]]);
  tab.wheel(200);
  assert.deepEqual(drain(tab), [[0, 30, 0, 30, 0, 127], [0, 30, 0, 30, 0, 73]]);
  // Clamping and the combined event.
  tab.pointer({ x: -5, y: 1e9, buttons: TabletButton.right | TabletButton.middle, wheel: 1 });
  assert.deepEqual(drain(tab), [[6, 0, 0, 0xff, 0x7f, 1]]);
  tab.moveNormalized(0.5, 0.25);
  assert.deepEqual(tab.position, { x: 16384, y: 8192, buttons: 6 });
  tab.move(Number.NaN, 16384);
  assert.deepEqual(tab.position, { x: 0, y: 16384, buttons: 6 });
  drain(tab);
  tab.move(0, 16384);
  assert.deepEqual(drain(tab), [], 'no change, no report');
  assert.deepEqual([...request(tab, 0xa1, 0x01, 0x0100, 0, 6).data], [6, 0, 0, 0, 0x40, 0]);
});

/** A manual clock with MachineTimers' shape. */
class FakeTimers {
  time = 1000;
  private timers: Array<{ at: number; fn: () => void; live: boolean }> = [];
  now(): number {
    return this.time;
  }
  set(delayMs: number, fn: () => void): () => void {
    const t = { at: this.time + delayMs, fn, live: true };
    this.timers.push(t);
    return () => {
      t.live = false;
    };
  }
  get armed(): number {
    return this.timers.filter((t) => t.live).length;
  }
  advance(ms: number): void {
    this.time += ms;
    for (const t of [...this.timers]) {
      if (t.live && t.at <= this.time) {
        t.live = false;
        t.fn();
      }
    }
    this.timers = this.timers.filter((t) => t.live);
  }
}

test('keyboard idle rate: with a clock, the unchanged report repeats every idle*4 ms (SeaBIOS key repeat)', () => {
  const timers = new FakeTimers();
  const kbd = configuredDevice(new UsbKeyboard({ timers }));
  // SeaBIOS: SET_PROTOCOL(boot), SET_IDLE(33 ms: 8 units of 4 ms).
  assert.equal(request(kbd, 0x21, 0x0b, 0, 0, 0).status, 'ok');
  assert.equal(request(kbd, 0x21, 0x0a, 8 << 8, 0, 0).status, 'ok');
  const first = readReport(kbd);
  assert.deepEqual(reportBytes(first), [0, 0, 0, 0, 0, 0, 0, 0], 'nothing sent yet: the current state at once');
  kbd.keyCode('KeyA', true);
  const press = readReport(kbd);
  assert.deepEqual(reportBytes(press), [0, 0, 4, 0, 0, 0, 0, 0]);
  const repeat = readReport(kbd);
  assert.equal(repeat.transfer.status, 'pending');
  assert.equal(timers.armed, 1);
  timers.advance(31);
  assert.equal(repeat.transfer.status, 'pending');
  timers.advance(1);
  assert.deepEqual(reportBytes(repeat), [0, 0, 4, 0, 0, 0, 0, 0], 'repeated after 32 ms');
  // A change in between restarts the period.
  const next = readReport(kbd);
  timers.advance(20);
  kbd.keyCode('KeyA', false);
  assert.deepEqual(reportBytes(next), [0, 0, 0, 0, 0, 0, 0, 0]);
  const after = readReport(kbd);
  timers.advance(31);
  assert.equal(after.transfer.status, 'pending', 'the period counts from the last report');
  timers.advance(1);
  assert.equal(after.transfer.status, 'ok');
  // Idle 0 (Linux): no repeats; the armed timer finds nothing to do.
  const waiting = readReport(kbd);
  assert.equal(request(kbd, 0x21, 0x0a, 0, 0, 0).status, 'ok');
  timers.advance(10_000);
  assert.equal(waiting.transfer.status, 'pending');
  assert.equal(timers.armed, 0);
  // Without a clock a nonzero idle rate is only remembered.
  const plain = configuredDevice(new UsbKeyboard());
  request(plain, 0x21, 0x0a, 8 << 8, 0, 0);
  assert.equal(readReport(plain).transfer.status, 'pending');
  // Reset and detach stop the timer.
  request(kbd, 0x21, 0x0a, 8 << 8, 0, 0);
  assert.equal(waiting.transfer.status, 'ok');
  readReport(kbd);
  assert.equal(timers.armed, 1);
  kbd.reset();
  assert.equal(timers.armed, 0);
});
