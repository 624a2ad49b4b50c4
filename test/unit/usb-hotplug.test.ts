// USB hot-plug on the machine thread (devices/usb/xhci-hotplug.ts): the xHCI model's host
// messages seen from the guest's side of the controller (PORTSC, events, transfers) and from
// the VM host's side (replies). The controller is driven at register level by the test driver.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import type { UsbDeviceConfig } from '../../main/vmm/config';
import { RawImageFile } from '../../main/vmm/devices/usb/storage/block-backend';
import { createUsbDevice } from '../../main/vmm/devices/usb/xhci-pci';
import { XhciHotplug } from '../../main/vmm/devices/usb/xhci-hotplug';
import {
  decodeUsbMessage, encodeUsbRequest, USB_KIND, type UsbReply, type UsbRequestBody,
} from '../../main/vmm/shared/usb-messages';
import { cbw, makeImage, tempDir } from '../helpers/usb-storage';
import { DATA, DB, Driver, PORTSC, trb } from '../helpers/xhci-driver';

const T = { TRANSFER: 32, PORT: 34 };
const CCS = 1;
const PED = 2;
const CSC = 1 << 17;

interface Timer { fn: () => void; live: boolean }

function harness() {
  const d = new Driver();
  d.start();
  const replies: UsbReply[] = [];
  const timers: Timer[] = [];
  const logs: string[] = [];
  let full = false;
  const hot = new XhciHotplug(d.hc, createUsbDevice, {
    send: (payload) => {
      if (full) return false;
      replies.push(decodeUsbMessage(payload) as unknown as UsbReply);
      return true;
    },
    setTimer: (_ms, fn) => {
      const t = { fn, live: true };
      timers.push(t);
      return () => { t.live = false; };
    },
    log: (text) => logs.push(text),
  });
  let nextId = 0;
  /** Sends a request; returns its reply if it came at once. */
  const ask = (body: UsbRequestBody): UsbReply | undefined => {
    const id = ++nextId;
    hot.handle(USB_KIND.REQUEST, encodeUsbRequest({ ...body, id }));
    return replies.find((r) => r.id === id);
  };
  const runTimers = () => {
    for (const t of timers.splice(0)) if (t.live) t.fn();
  };
  return { d, hot, replies, ask, runTimers, timers, logs, setFull: (v: boolean) => { full = v; } };
}

function ok(reply: UsbReply | undefined): Extract<UsbReply, { ok: true }> {
  assert.ok(reply, 'a reply');
  assert.ok(reply.ok, `ok, not ${JSON.stringify(reply)}`);
  return reply;
}

function failed(reply: UsbReply | undefined): Extract<UsbReply, { ok: false }> {
  assert.ok(reply, 'a reply');
  assert.ok(!reply.ok, `an error, not ${JSON.stringify(reply)}`);
  return reply;
}

test('attach: a keyboard goes to the first USB 2 port, the guest sees CCS, CSC and a Port Status Change event', () => {
  const { d, ask } = harness();
  const r = ok(ask({ op: 'attach', device: { kind: 'keyboard' } }));
  assert.equal(r.port, 5);
  const sc = d.r32(PORTSC(5));
  assert.equal(sc & CCS, CCS);
  assert.equal(sc & CSC, CSC);
  assert.equal((sc >>> 10) & 0xf, 1, 'full speed (PSI 1)');
  const ev = d.events();
  assert.deepEqual(ev.map((e) => [e.type, e.param / 2 ** 24]), [[T.PORT, 5]]);
  const port5 = r.ports.find((p) => p.port === 5);
  assert.deepEqual(port5, {
    port: 5, protocol: 'usb2',
    device: {
      kind: 'keyboard', name: 'usb-kbd', product: 'Porthole USB Keyboard', speed: 'full', vendorId: 0x1d6b, productId: 0x0101,
      path: null, readOnly: null,
    },
  });
  assert.deepEqual(r.plugged, [{ kind: 'keyboard', port: 5 }]);
  assert.equal(r.ports.length, 8);
  assert.ok(r.ports.filter((p) => p.port !== 5).every((p) => p.device === null));
});

test('storage goes to a USB 3 port at SuperSpeed while one is free, then to USB 2 at high speed', () => {
  const dir = tempDir();
  try {
    const { d, ask } = harness();
    for (let i = 0; i < 5; i++) {
      const image = makeImage(dir, 64 * 1024, `s${i}.img`);
      const r = ok(ask({ op: 'attach', device: { kind: 'storage', path: image, readOnly: i === 4 } }));
      const info = r.ports.find((p) => p.port === r.port)!;
      if (i < 4) {
        assert.equal(r.port, i + 1);
        assert.equal(info.device!.speed, 'super');
        assert.equal((d.r32(PORTSC(i + 1)) >>> 10) & 0xf, 4, 'PORTSC speed: SuperSpeed');
        assert.equal(d.r32(PORTSC(i + 1)) & (CCS | PED), CCS | PED, 'a USB 3 port is enabled at connect');
      } else {
        assert.equal(r.port, 5);
        assert.equal(info.device!.speed, 'high');
        assert.equal(info.device!.readOnly, true);
      }
      assert.equal(info.device!.path, image);
      assert.equal(info.device!.kind, 'storage');
      assert.deepEqual(d.events().map((e) => [e.type, e.param / 2 ** 24]), [[T.PORT, r.port]]);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('an image that is missing or in use is refused with its reason, and nothing is plugged in', () => {
  const dir = tempDir();
  try {
    const { d, ask } = harness();
    const missing = path.join(dir, 'missing.img');
    const r1 = failed(ask({ op: 'attach', device: { kind: 'storage', path: missing, readOnly: false } }));
    assert.equal(r1.code, 'not-found');
    assert.equal(r1.error, `disk image ${missing}: it does not exist`);
    const image = makeImage(dir, 64 * 1024);
    const holder = RawImageFile.open(image);
    try {
      const r2 = failed(ask({ op: 'attach', device: { kind: 'storage', path: image, readOnly: false } }));
      assert.equal(r2.code, 'invalid-state');
      assert.match(r2.error, /in use/);
    } finally {
      holder.close();
    }
    assert.equal(d.events().length, 0, 'no port changed');
    assert.ok(ok(ask({ op: 'list' })).ports.every((p) => p.device === null));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('ports: a chosen port, a taken port, a keyboard on a USB 3 port, no free port, detach of an empty or unknown port', () => {
  const { ask } = harness();
  assert.equal(ok(ask({ op: 'attach', device: { kind: 'tablet', port: 8 } })).port, 8);
  const taken = failed(ask({ op: 'attach', device: { kind: 'keyboard', port: 8 } }));
  assert.deepEqual([taken.code, taken.error], ['invalid-state', 'USB port 8 already has usb-tablet']);
  const usb3 = failed(ask({ op: 'attach', device: { kind: 'keyboard', port: 2 } }));
  assert.deepEqual([usb3.code, usb3.error], ['invalid-argument', 'a keyboard needs a USB 2 port; port 2 is a USB 3 port']);
  for (let i = 0; i < 3; i++) ok(ask({ op: 'attach', device: { kind: 'keyboard' } }));
  const none = failed(ask({ op: 'attach', device: { kind: 'tablet' } }));
  assert.deepEqual([none.code, none.error], ['invalid-state', 'the xHCI controller has no free USB 2 port for a tablet']);
  assert.equal(failed(ask({ op: 'detach', port: 1 })).code, 'invalid-state');
  assert.equal(failed(ask({ op: 'detach', port: 9 })).code, 'invalid-argument');
  const r = ok(ask({ op: 'detach', port: 8 }));
  assert.equal(r.port, 8);
  assert.deepEqual(r.plugged.map((c) => c.port), [5, 6, 7]);
});

test('a stick detached in the middle of a WRITE: no event for its transfers, nothing left in flight, the image released', () => {
  const dir = tempDir();
  try {
    const { d, ask } = harness();
    const image = makeImage(dir, 64 * 1024);
    const r = ok(ask({ op: 'attach', device: { kind: 'storage', path: image, readOnly: false } }));
    assert.equal(r.port, 1);
    const slot = d.enumerate(1, 4);
    d.w32(PORTSC(1), CSC); // the driver acknowledges the connect: a later change is a new event
    d.control(slot, [0, 9, 1, 0, 0], 0, false); // SET_CONFIGURATION 1
    assert.equal(d.configure(slot, [[3, 6], [4, 2]]).code, 1); // EP1 IN bulk (DCI 3), EP2 OUT bulk (DCI 4)
    d.events();
    // CBW: WRITE(10) of 8 blocks; the guest sends the first 512 bytes and already waits for the CSW.
    d.dma.write(DATA, cbw(7, 4096, false, [0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0]));
    const outRing = d.ring(slot, 4);
    outRing.push(DATA, 0, 31, trb(1, 1 << 5));
    outRing.push(DATA + 0x1000, 0, 512, trb(1, 1 << 5));
    d.w32(DB + 4 * slot, 4);
    d.ring(slot, 3).push(DATA + 0x2000, 0, 13, trb(1, 1 << 5));
    d.w32(DB + 4 * slot, 3);
    assert.deepEqual(d.events().map((e) => [e.type, e.code, e.ep]), [[T.TRANSFER, 1, 4], [T.TRANSFER, 1, 4]]);
    assert.equal(d.hc.slots[slot].endpoints[3]!.inflight.length, 1, 'the CSW TD waits in the device');

    const gone = ok(ask({ op: 'detach', port: 1 }));
    assert.equal(gone.port, 1);
    assert.deepEqual(gone.plugged, []);
    const sc = d.r32(PORTSC(1));
    assert.equal(sc & (CCS | PED), 0, 'not connected, not enabled');
    assert.equal(sc & CSC, CSC);
    assert.deepEqual(d.events().map((e) => [e.type, e.param / 2 ** 24]), [[T.PORT, 1]], 'only the disconnect');
    for (const e of d.hc.slots[slot].endpoints) assert.equal(e?.inflight.length ?? 0, 0, 'no TD in flight');
    // The image's exclusive lock is gone: another writer may open it at once.
    RawImageFile.open(image).close();
    // The guest's late doorbell for the gone device reaches no device and no crash.
    d.w32(DB + 4 * slot, 3);
    for (const e of d.events()) assert.notEqual(e.code, 1, 'no successful transfer from a gone device');
    // Plugged in again, it is a new device on a fresh port state.
    const again = ok(ask({ op: 'attach', device: { kind: 'storage', path: image, readOnly: false } }));
    assert.equal(again.port, 1);
    assert.equal(d.r32(PORTSC(1)) & CCS, CCS);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('what a relaunch plugs in again puts every device back on its port at the same speed', () => {
  const dir = tempDir();
  try {
    const first = harness();
    const image = makeImage(dir, 64 * 1024);
    ok(first.ask({ op: 'attach', device: { kind: 'keyboard', port: 7 } }));
    ok(first.ask({ op: 'attach', device: { kind: 'storage', path: image, readOnly: true } }));
    const plugged = ok(first.ask({ op: 'list' })).plugged;
    assert.deepEqual(plugged, [{ kind: 'storage', path: image, readOnly: true, port: 1 }, { kind: 'keyboard', port: 7 }]);
    first.hot.close(); // the machine ends: images are released
    const second = harness();
    second.hot.plugConfigured(plugged);
    const ports = ok(second.ask({ op: 'list' })).ports.filter((p) => p.device);
    assert.deepEqual(ports.map((p) => [p.port, p.device!.kind, p.device!.speed]), [[1, 'storage', 'super'], [7, 'keyboard', 'full']]);
    second.hot.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('config devices: pinned ports first, the others on the first free port of their speed, as before', () => {
  const { hot, ask } = harness();
  const devices: UsbDeviceConfig[] = [{ kind: 'keyboard' }, { kind: 'tablet', port: 5 }];
  hot.plugConfigured(devices);
  assert.deepEqual(ok(ask({ op: 'list' })).plugged, [{ kind: 'tablet', port: 5 }, { kind: 'keyboard', port: 6 }]);
  const clash = harness();
  assert.throws(() => clash.hot.plugConfigured([{ kind: 'keyboard', port: 2 }]), {
    message: 'usb.devices[0]: a keyboard needs a USB 2 port; port 2 is a USB 3 port',
  });
});

/** Enumerates the keyboard on `port`, configures it and its interrupt IN endpoint (DCI 3). */
function configuredKeyboard(d: Driver, port: number): number {
  const slot = d.enumerate(port, 1);
  d.control(slot, [0, 9, 1, 0, 0], 0, false);
  assert.equal(d.configure(slot, [[3, 7]]).code, 1);
  d.events();
  return slot;
}

/** Posts `n` 8-byte interrupt IN TDs and returns the reports that came back. */
function readReports(d: Driver, slot: number, n: number): number[][] {
  const ring = d.ring(slot, 3);
  const buffers: number[] = [];
  for (let i = 0; i < n; i++) {
    const at = DATA + 0x100 * (i % 64);
    buffers.push(at);
    ring.push(at, 0, 8, trb(1, 1 << 5));
  }
  d.w32(DB + 4 * slot, 3);
  const done = d.events().filter((e) => e.type === T.TRANSFER && e.ep === 3);
  return done.map((_, i) => {
    const b = new Uint8Array(8);
    d.dma.read(buffers[i], b);
    return [...b];
  });
}

test('keys reach the guest as boot reports, paced to its polling; the reply comes when all are taken', () => {
  const { d, ask, runTimers, timers, replies } = harness();
  ok(ask({ op: 'attach', device: { kind: 'keyboard' } }));
  const slot = configuredKeyboard(d, 5);
  // ctrl+alt+Delete: three downs, three ups.
  const r = ok(ask({ op: 'keys', events: [
    { usage: 0xe0, down: true }, { usage: 0xe2, down: true }, { usage: 0x4c, down: true },
    { usage: 0x4c, down: false }, { usage: 0xe2, down: false }, { usage: 0xe0, down: false },
  ] }));
  assert.equal(r.port, undefined);
  assert.deepEqual(readReports(d, slot, 6), [
    [1, 0, 0, 0, 0, 0, 0, 0], [5, 0, 0, 0, 0, 0, 0, 0], [5, 0, 0x4c, 0, 0, 0, 0, 0],
    [5, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0],
  ]);
  // 40 key events: more than the keyboard queues; the rest waits for the guest to poll.
  const events = [];
  for (let i = 0; i < 20; i++) events.push({ usage: 0x04 + i, down: true }, { usage: 0x04 + i, down: false });
  const before = replies.length;
  assert.equal(ask({ op: 'keys', events }), undefined, 'no reply while keys wait');
  assert.equal(timers.filter((t) => t.live).length, 1);
  const seen: number[][] = [];
  for (let round = 0; round < 10 && replies.length === before; round++) {
    seen.push(...readReports(d, slot, 16));
    runTimers();
  }
  seen.push(...readReports(d, slot, 16));
  ok(replies[replies.length - 1]);
  assert.equal(seen.length, 40);
  seen.forEach((report, i) => assert.deepEqual(report.slice(2, 4), i % 2 === 0 ? [0x04 + i / 2, 0] : [0, 0]));
});

test('keys need a keyboard the guest has set up; removing it fails the keys still waiting', () => {
  const { d, ask, runTimers, replies } = harness();
  const none = failed(ask({ op: 'keys', events: [{ usage: 4, down: true }] }));
  assert.deepEqual([none.code, none.error], ['invalid-state', 'this VM has no USB keyboard; add one first']);
  ok(ask({ op: 'attach', device: { kind: 'keyboard' } }));
  assert.match(failed(ask({ op: 'keys', events: [{ usage: 4, down: true }] })).error, /has not set up the USB keyboard/);
  configuredKeyboard(d, 5);
  assert.equal(failed(ask({ op: 'keys', events: [{ usage: 3, down: true }] })).code, 'invalid-argument');
  const events = [];
  for (let i = 0; i < 20; i++) events.push({ usage: 0x04 + i, down: true }, { usage: 0x04 + i, down: false });
  const id = replies.length;
  assert.equal(ask({ op: 'keys', events }), undefined);
  ok(ask({ op: 'detach', port: 5 }));
  const waiting = replies.slice(id).find((r) => !r.ok);
  assert.ok(waiting && !waiting.ok);
  assert.match(waiting.error, /keyboard was removed/);
  runTimers(); // the cancelled pacing does nothing
});

test('a reply that finds the channel full is sent later, in order', () => {
  const { ask, replies, runTimers, setFull } = harness();
  setFull(true);
  assert.equal(ask({ op: 'list' }), undefined);
  assert.equal(ask({ op: 'attach', device: { kind: 'keyboard' } }), undefined);
  runTimers();
  assert.equal(replies.length, 0);
  setFull(false);
  runTimers();
  assert.deepEqual(replies.map((r) => [r.id, r.ok]), [[1, true], [2, true]]);
});

test('a request that is not JSON is dropped with a log line; an unknown op gets an error', () => {
  const { hot, ask, logs, replies } = harness();
  hot.handle(USB_KIND.REQUEST, new TextEncoder().encode('{nope'));
  assert.equal(replies.length, 0);
  assert.match(logs.join('\n'), /not JSON/);
  const r = failed(ask({ op: 'frobnicate' } as unknown as UsbRequestBody));
  assert.equal(r.code, 'invalid-argument');
});
