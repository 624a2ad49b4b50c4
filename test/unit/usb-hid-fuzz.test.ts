// Fuzz: random SETUP packets, random transfers on random endpoints, cancels, resets, re-plugs
// and input events on the HID keyboard and tablet. No exception may escape, every transfer
// completes exactly once, and only a transfer on the interrupt IN endpoint may stay pending
// (until it is cancelled).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { UsbKeyboard, KEY_CODE_USAGES } from '../../main/vmm/devices/usb/hid-keyboard';
import { UsbTablet } from '../../main/vmm/devices/usb/hid-tablet';
import type { UsbHidDevice } from '../../main/vmm/devices/usb/hid';
import type { UsbSetup, UsbTransfer, UsbTransferType } from '../../main/vmm/devices/usb/usb-device';
import { Prng, fuzzCases } from '../helpers/prng';
import { enumerate, RecordingPort } from '../helpers/usb';

const CASES = fuzzCases(10_000);
const OPS_PER_CASE = 12;

const REQUEST_TYPES = [0x00, 0x80, 0x01, 0x81, 0x02, 0x82, 0x21, 0xa1, 0x22, 0xa2, 0x40, 0xc0, 0x60, 0xe0, 0x03, 0x83];
const REQUESTS = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 0x30, 0x31];
const TYPES: UsbTransferType[] = ['control', 'interrupt', 'interrupt', 'bulk', 'isochronous'];
const KEY_NAMES = [...Object.keys(KEY_CODE_USAGES), 'Nope', '', 'constructor'];

function randomWord(rng: Prng): number {
  switch (rng.below(4)) {
    case 0: return rng.below(4);
    case 1: return rng.below(0x100);
    case 2: return (rng.pick([1, 2, 3, 6, 0x0f, 0x21, 0x22, 0x23, 7]) << 8) | rng.below(4);
    default: return rng.below(0x10000);
  }
}

/** Requests a host really sends to a HID device: [bmRequestType, bRequest, wValue, wIndex, wLength]. */
const PLAUSIBLE: Array<[number, number, number, number, number]> = [
  [0x80, 6, 0x0100, 0, 18], [0x80, 6, 0x0100, 0, 8], [0x80, 6, 0x0200, 0, 9], [0x80, 6, 0x0200, 0, 255],
  [0x80, 6, 0x0300, 0, 255], [0x80, 6, 0x0302, 0x409, 255], [0x80, 6, 0x0600, 0, 10], [0x80, 6, 0x0f00, 0, 5],
  [0x00, 5, 3, 0, 0], [0x00, 9, 1, 0, 0], [0x00, 9, 0, 0, 0], [0x80, 8, 0, 0, 1], [0x81, 10, 0, 0, 1],
  [0x01, 11, 0, 0, 0], [0x80, 0, 0, 0, 2], [0x81, 0, 0, 0, 2], [0x82, 0, 0, 0x81, 2], [0x02, 1, 0, 0x81, 0],
  [0x02, 3, 0, 0x81, 0], [0x00, 3, 1, 0, 0], [0x00, 1, 1, 0, 0], [0x81, 6, 0x2200, 0, 63], [0x81, 6, 0x2100, 0, 9],
  [0xa1, 1, 0x0100, 0, 8], [0xa1, 1, 0x0200, 0, 1], [0x21, 9, 0x0200, 0, 1], [0xa1, 2, 0, 0, 1],
  [0x21, 0x0a, 0, 0, 0], [0x21, 0x0a, 0x0800, 0, 0], [0x21, 0x0a, 0x0100, 0, 0], [0xa1, 3, 0, 0, 1], [0x21, 0x0b, 0, 0, 0], [0x21, 0x0b, 1, 0, 0],
];

function randomSetup(rng: Prng): UsbSetup {
  if (rng.below(2) === 0) {
    const fields = [...rng.pick(PLAUSIBLE)];
    // Usually as a host sends it; sometimes with one field changed.
    if (rng.below(3) === 0) fields[rng.below(5)] = rng.below(2) === 0 ? rng.below(0x100) : randomWord(rng);
    const [requestType, request, value, index, length] = fields;
    return { requestType: requestType & 0xff, request: request & 0xff, value, index, length };
  }
  return {
    requestType: rng.below(3) === 0 ? rng.below(0x100) : rng.pick(REQUEST_TYPES),
    request: rng.below(4) === 0 ? rng.below(0x100) : rng.pick(REQUESTS),
    value: randomWord(rng),
    index: rng.below(3) === 0 ? randomWord(rng) : rng.below(3),
    length: rng.below(3) === 0 ? randomWord(rng) : rng.below(80),
  };
}

interface Tracked {
  transfer: UsbTransfer;
  completions: number;
}

function fuzzDevice(makeDevice: () => UsbHidDevice, input: (dev: UsbHidDevice, rng: Prng) => void, seed: number): void {
  const rng = new Prng(seed);
  let stats = { ok: 0, stall: 0, pendingAtEnd: 0 };
  for (let c = 0; c < CASES; c++) {
    const dev = makeDevice();
    const port = new RecordingPort();
    dev.attach(port);
    if (rng.below(4) !== 0) enumerate(dev);
    const tracked: Tracked[] = [];
    const submitTracked = (transfer: UsbTransfer) => {
      const t: Tracked = { transfer, completions: 0 };
      tracked.push(t);
      dev.submit(transfer, (done) => {
        assert.equal(done, transfer);
        t.completions++;
        assert.equal(t.completions, 1, 'completed twice');
        assert.notEqual(done.status, 'pending');
        assert.ok(done.actualLength >= 0 && done.actualLength <= done.data.length);
        if (done.status !== 'ok') assert.equal(done.actualLength, 0);
        // A done callback that submits again, as a controller re-arming an interrupt endpoint.
        if (done.status === 'ok' && done.endpoint === 1 && rng.below(4) === 0) {
          submitTracked({ ...done, data: new Uint8Array(8), status: 'pending', actualLength: 0 });
        }
      });
    };
    for (let op = 0; op < OPS_PER_CASE; op++) {
      const choice = rng.below(16);
      if (choice < 5) {
        const setup = randomSetup(rng);
        const dirIn = rng.below(10) === 0 ? rng.below(2) === 0 : (setup.requestType & 0x80) !== 0;
        // The buffer usually matches wLength; sometimes it is shorter or longer.
        const size = rng.below(6) === 0 ? rng.below(64) : Math.min(setup.length, 1024);
        const data = new Uint8Array(size);
        if (!dirIn) for (let i = 0; i < size; i++) data[i] = rng.below(256);
        submitTracked({ endpoint: 0, in: dirIn, type: rng.below(12) === 0 ? rng.pick(TYPES) : 'control', setup: rng.below(20) === 0 ? null : setup, data, status: 'pending', actualLength: 0 });
      } else if (choice < 9) {
        const endpoint = rng.below(3) === 0 ? rng.below(18) : 1;
        const type = rng.below(3) === 0 ? rng.pick(TYPES) : 'interrupt';
        const data = new Uint8Array(rng.below(3) === 0 ? rng.below(16) : 8);
        submitTracked({ endpoint, in: rng.below(4) !== 0, type, setup: null, data, status: 'pending', actualLength: 0 });
      } else if (choice < 13) {
        input(dev, rng);
      } else if (choice === 13) {
        const victim = tracked[rng.below(tracked.length + 1)];
        if (victim) dev.cancel(victim.transfer);
      } else if (choice === 14) {
        // A port reset, and sometimes the host enumerating again after it.
        dev.reset();
        if (rng.below(2) === 0) enumerate(dev);
      } else {
        dev.detach();
        dev.attach(port);
      }
    }
    for (const t of tracked) {
      if (t.completions === 0) {
        assert.equal(t.transfer.status, 'pending');
        assert.deepEqual([t.transfer.endpoint, t.transfer.in, t.transfer.type], [1, true, 'interrupt'], 'only the interrupt IN endpoint NAKs');
        stats.pendingAtEnd++;
        dev.cancel(t.transfer);
        assert.equal(t.transfer.status, 'cancelled');
      }
      assert.equal(t.completions, 1);
      if (t.transfer.status === 'ok') stats.ok++;
      if (t.transfer.status === 'stall') stats.stall++;
    }
    dev.detach();
  }
  // The fuzz reached both outcomes and the NAK path (not only STALLs).
  assert.ok(stats.ok > CASES && stats.stall > CASES && stats.pendingAtEnd > CASES / 20, JSON.stringify(stats));
  stats = { ok: 0, stall: 0, pendingAtEnd: 0 };
}

/** A manual clock for idle-rate repeats; input steps move it on. */
const clock = {
  time: 0,
  timers: [] as Array<{ at: number; fn: () => void; live: boolean }>,
  now(): number {
    return this.time;
  },
  set(delayMs: number, fn: () => void): () => void {
    assert.ok(Number.isFinite(delayMs) && delayMs > 0, `timer delay ${delayMs}`);
    const t = { at: this.time + delayMs, fn, live: true };
    this.timers.push(t);
    return () => { t.live = false; };
  },
  advance(ms: number): void {
    this.time += ms;
    const due = this.timers.filter((t) => t.live && t.at <= this.time);
    this.timers = this.timers.filter((t) => t.live && t.at > this.time);
    for (const t of due) { t.live = false; t.fn(); }
  },
};

const keyboardInput = (dev: UsbHidDevice, rng: Prng) => {
  const kbd = dev as UsbKeyboard;
  if (rng.below(3) === 0) clock.advance(rng.below(200));
  switch (rng.below(5)) {
    case 0: kbd.key(rng.below(300) - 10, rng.below(2) === 0); break;
    case 1: kbd.keyCode(rng.pick(KEY_NAMES), rng.below(2) === 0); break;
    case 2: kbd.tap([rng.pick(KEY_NAMES), rng.pick(KEY_NAMES)]); break;
    case 3: kbd.releaseAll(); break;
    default: for (let i = 0; i < 8; i++) kbd.key(0x04 + rng.below(12), true);
  }
};

const ODD_NUMBERS = [Number.NaN, Infinity, -Infinity, -1, 1e12, 0.5, -0.5, 32767, 32768];
const tabletInput = (dev: UsbHidDevice, rng: Prng) => {
  const tab = dev as UsbTablet;
  if (rng.below(3) === 0) clock.advance(rng.below(200));
  const n = () => (rng.below(4) === 0 ? rng.pick(ODD_NUMBERS) : rng.below(40000) - 2000);
  switch (rng.below(5)) {
    case 0: tab.move(n(), n()); break;
    case 1: tab.button(rng.below(64), rng.below(2) === 0); break;
    case 2: tab.wheel(n()); break;
    case 3: tab.setButtons(n()); break;
    default: tab.pointer({ x: n(), y: n(), buttons: rng.below(2) ? n() : undefined, wheel: rng.below(2) ? n() : undefined });
  }
  const p = tab.position;
  assert.ok(Number.isInteger(p.x) && p.x >= 0 && p.x <= 32767);
  assert.ok(Number.isInteger(p.y) && p.y >= 0 && p.y <= 32767);
  assert.ok(p.buttons >= 0 && p.buttons <= 31);
};

test(`fuzz: HID keyboard survives ${CASES} random sessions of control and data transfers`, () => {
  fuzzDevice(() => new UsbKeyboard({ speed: 'full', timers: clock }), keyboardInput, 0x5eed01);
});

test(`fuzz: high-speed HID keyboard (seed 2)`, () => {
  fuzzDevice(() => new UsbKeyboard({ speed: 'high' }), keyboardInput, 20261127);
});

test(`fuzz: HID tablet survives ${CASES} random sessions of control and data transfers`, () => {
  fuzzDevice(() => new UsbTablet({ timers: clock }), tabletInput, 0x7ab1e7);
});
