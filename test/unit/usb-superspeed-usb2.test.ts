// A SuperSpeed host device may go on a USB 2 port (shown at high speed) only if it has no
// isochronous endpoints and no streams (issue 10 part 2): the rule read from the device's raw
// descriptors (host/usb-speed-compat.ts), the port choice on the machine thread
// (xhci-hotplug.ts), and what the guest reads through our xHCI, at register level, from a
// device shown at high speed (passthrough/high-speed-view.ts).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { endpointsOf, usb2RefusalOf, usb2RefusalOfHostDevice } from '../../main/host/usb-speed-compat';
import type { UsbDeviceConfig } from '../../main/vmm/config';
import { patchDescriptorForHighSpeed } from '../../main/vmm/devices/usb/passthrough/high-speed-view';
import { PassthroughRouter } from '../../main/vmm/devices/usb/passthrough/passthrough-device';
import { createUsbDevice } from '../../main/vmm/devices/usb/xhci-pci';
import { XhciHotplug } from '../../main/vmm/devices/usb/xhci-hotplug';
import {
  decodeSubmit, encodeData, encodeDone, PASSTHROUGH_KIND,
} from '../../main/vmm/shared/usb-passthrough-messages';
import { decodeUsbMessage, encodeUsbRequest, USB_KIND, type UsbReply, type UsbRequestBody } from '../../main/vmm/shared/usb-messages';
import { fuzzCases, Prng } from '../helpers/prng';
import { DATA, Driver, PORTSC } from '../helpers/xhci-driver';

// ---- descriptors -------------------------------------------------------------------------

/** A SuperSpeed device descriptor: bcdUSB 3.20, bMaxPacketSize0 9 (512). */
const SS_DEVICE = [18, 1, 0x20, 0x03, 0, 0, 0, 9, 0xf4, 0x46, 0x01, 0x00, 0x00, 0x01, 1, 2, 3, 1];

function config(value: number, body: number[][]): number[] {
  const flat = body.flat();
  const total = 9 + flat.length;
  const interfaces = body.filter((d) => d[1] === 4 && d[3] === 0).length;
  return [9, 2, total & 0xff, total >> 8, interfaces, value, 0, 0x80, 50, ...flat];
}
const itf = (n: number, alt: number, eps: number, cls = 8) => [9, 4, n, alt, eps, cls, 6, 0x50, 0];
const ep = (address: number, attributes: number, maxPacket: number, interval = 0) => [7, 5, address, attributes, maxPacket & 0xff, maxPacket >> 8, interval];
/** SuperSpeed endpoint companion: bMaxBurst, bmAttributes (bulk: MaxStreams in bits 4:0). */
const companion = (burst: number, attributes: number) => [6, 0x30, burst, attributes, 0, 0];

/** A USB 3 stick: bulk IN and OUT, companions without streams. */
const STICK = Uint8Array.from([...SS_DEVICE, ...config(1, [itf(0, 0, 2), ep(0x81, 2, 1024), companion(15, 0), ep(0x02, 2, 1024), companion(15, 0)])]);
/** A UAS drive: the BOT alternate setting, and UAS's alternate setting with 2^5 streams on its bulk endpoints. */
const UAS = Uint8Array.from([...SS_DEVICE, ...config(1, [
  itf(0, 0, 2), ep(0x81, 2, 1024), companion(0, 0), ep(0x02, 2, 1024), companion(0, 0),
  itf(0, 1, 2, 8), ep(0x83, 2, 1024), companion(0, 5), ep(0x04, 2, 1024), companion(0, 5),
])]);
/** A webcam: video streaming's alternate setting 1 has an isochronous IN endpoint. */
const CAMERA = Uint8Array.from([...SS_DEVICE, ...config(1, [
  itf(0, 0, 1, 14), ep(0x83, 3, 16, 8), companion(0, 0),
  itf(1, 0, 0, 14), itf(1, 1, 1, 14), ep(0x81, 5, 1024, 1), companion(0, 0),
])]);

test('the endpoints of every configuration, interface and alternate setting, with their streams', () => {
  assert.deepEqual(endpointsOf(UAS).map((e) => [e.address, e.transfer, e.interface, e.alternate, e.maxStreams]), [
    [0x81, 2, 0, 0, 0], [0x02, 2, 0, 0, 0], [0x83, 2, 0, 1, 5], [0x04, 2, 0, 1, 5],
  ]);
  // A second configuration counts too.
  const two = Uint8Array.from([...STICK, ...config(2, [itf(0, 0, 1), ep(0x85, 1, 256, 1), companion(0, 0)])]);
  assert.deepEqual(endpointsOf(two).map((e) => [e.configuration, e.address, e.transfer]), [[1, 0x81, 2], [1, 0x02, 2], [2, 0x85, 1]]);
});

test('a stick with only bulk endpoints and no streams may go on a USB 2 port', () => {
  assert.equal(usb2RefusalOf(STICK), null);
});

test('an isochronous endpoint anywhere, or a bulk endpoint with streams, keeps a device off USB 2, naming the endpoint', () => {
  assert.equal(usb2RefusalOf(CAMERA), 'it has isochronous endpoint 0x81 (configuration 1, interface 1, alternate setting 1)');
  assert.equal(usb2RefusalOf(UAS), 'its bulk endpoint 0x83 (configuration 1, interface 0, alternate setting 1) has streams (MaxStreams 5)');
  // An isochronous companion's bmAttributes is Mult, not streams: still refused as isochronous.
  const isoMult = Uint8Array.from([...SS_DEVICE, ...config(1, [itf(0, 0, 1), ep(0x01, 1, 1024, 1), companion(0, 2)])]);
  assert.match(usb2RefusalOf(isoMult)!, /isochronous endpoint 0x01/);
});

test('malformed descriptors are refused with a sentence, never a loop or a read past the end', () => {
  const zero = Uint8Array.from([...SS_DEVICE, 0, 0, 0]);
  assert.match(usb2RefusalOf(zero)!, /malformed \(a 0-byte descriptor at byte 18 of 21\)/);
  const past = Uint8Array.from([...SS_DEVICE, 9, 2, 9]);
  assert.match(usb2RefusalOf(past)!, /malformed \(a 9-byte descriptor at byte 18 of 21\)/);
  // A companion with no endpoint before it, short descriptors of known types: skipped.
  const odd = Uint8Array.from([...SS_DEVICE, ...companion(0, 31), 2, 5, 3, 4, 0]);
  assert.equal(usb2RefusalOf(odd), null);
});

test('the rule for a host device reads its descriptors from sysfs; an unreadable file is a refusal that says so', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-usb-compat-'));
  try {
    fs.mkdirSync(path.join(root, '2-1'));
    fs.writeFileSync(path.join(root, '2-1', 'descriptors'), CAMERA);
    fs.mkdirSync(path.join(root, '2-2'));
    fs.writeFileSync(path.join(root, '2-2', 'descriptors'), STICK);
    fs.mkdirSync(path.join(root, '2-3'));
    fs.writeFileSync(path.join(root, '2-3', 'descriptors'), Uint8Array.from(SS_DEVICE.slice(0, 10)));
    assert.match(usb2RefusalOfHostDevice('2-1', root)!, /isochronous endpoint 0x81/);
    assert.equal(usb2RefusalOfHostDevice('2-2', root), null);
    assert.equal(usb2RefusalOfHostDevice('2-3', root), 'its descriptors in sysfs are 10 bytes, too short to check');
    assert.equal(usb2RefusalOfHostDevice('2-4', root), 'its descriptors could not be read from sysfs (ENOENT)');
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

// ---- the port choice and the guest's view ------------------------------------------------

function harness() {
  const d = new Driver();
  d.start();
  const toHost: [number, Uint8Array][] = [];
  const router = new PassthroughRouter({
    send: (kind, payload) => { toHost.push([kind, payload.slice()]); return true; },
    setTimer: () => () => undefined,
    log: () => undefined,
  });
  const replies: UsbReply[] = [];
  const hot = new XhciHotplug(d.hc, (c, options) => (c.kind === 'host' ? router.create(c, { onUsb3Port: options.superSpeed }) : createUsbDevice(c, options)), {
    send: (payload) => { replies.push(decodeUsbMessage(payload) as unknown as UsbReply); return true; },
    setTimer: () => () => undefined,
    log: () => undefined,
  });
  let nextId = 0;
  const ask = (body: UsbRequestBody): UsbReply => {
    const id = ++nextId;
    hot.handle(USB_KIND.REQUEST, encodeUsbRequest({ ...body, id }));
    return replies.find((r) => r.id === id)!;
  };
  return { d, router, toHost, ask };
}

function hostDevice(handle: number, usb2Refusal: string | null | undefined, port?: number): UsbDeviceConfig {
  return {
    kind: 'host', handle, hostName: `2-${handle}`, product: `QEMU stick ${handle}`, speed: 'super', vendorId: 0x46f4, productId: 1,
    ...(usb2Refusal === undefined ? {} : { usb2Refusal }), ...(port === undefined ? {} : { port }),
  };
}

test('with the USB 3 ports taken, a SuperSpeed device that may goes on a USB 2 port at high speed; one that may not is refused, naming it and why', () => {
  const { d, ask } = harness();
  for (let h = 1; h <= 4; h++) {
    const r = ask({ op: 'attach', device: hostDevice(h, null) });
    assert.ok(r.ok && r.port === h, JSON.stringify(r));
  }
  const camera = ask({ op: 'attach', device: hostDevice(5, 'it has isochronous endpoint 0x81 (configuration 1, interface 1, alternate setting 1)') });
  assert.ok(!camera.ok);
  assert.equal(camera.error, 'the xHCI controller has no free USB 3 port for the SuperSpeed device QEMU stick 5 (host 2-5, 46f4:0001), and it cannot go on a USB 2 port instead: '
    + 'a SuperSpeed device may go on a USB 2 port only if it has no isochronous endpoints and no streams, and it has isochronous endpoint 0x81 (configuration 1, interface 1, alternate setting 1)');
  const unchecked = ask({ op: 'attach', device: hostDevice(6, undefined) });
  assert.ok(!unchecked.ok);
  assert.match(unchecked.error, /its descriptors were not checked for isochronous endpoints and streams/);
  const stick = ask({ op: 'attach', device: hostDevice(7, null) });
  assert.ok(stick.ok, JSON.stringify(stick));
  assert.equal(stick.port, 5);
  assert.equal(stick.ports.find((p) => p.port === 5)!.device!.speed, 'high');
  assert.equal((d.r32(PORTSC(5)) >>> 10) & 0xf, 3, 'PORTSC speed: high speed');
});

test('asked for a USB 2 port by number: the same rule, with the port named', () => {
  const { ask } = harness();
  const refused = ask({ op: 'attach', device: hostDevice(1, 'its bulk endpoint 0x83 (configuration 1, interface 0, alternate setting 1) has streams (MaxStreams 5)', 6) });
  assert.ok(!refused.ok);
  assert.equal(refused.error, 'the SuperSpeed device QEMU stick 1 (host 2-1, 46f4:0001) cannot go on port 6, a USB 2 port: a SuperSpeed device may go on a USB 2 port only if it has no isochronous endpoints and no streams, '
    + 'and its bulk endpoint 0x83 (configuration 1, interface 0, alternate setting 1) has streams (MaxStreams 5)');
  const ok = ask({ op: 'attach', device: hostDevice(2, null, 6) });
  assert.ok(ok.ok && ok.port === 6, JSON.stringify(ok));
  // A USB 3 port still takes a SuperSpeed device, and only that.
  const usb3 = ask({ op: 'attach', device: { ...(hostDevice(3, null, 1) as Extract<UsbDeviceConfig, { kind: 'host' }>), speed: 'high' } });
  assert.ok(!usb3.ok);
  assert.match(usb3.error, /runs at high speed and needs a USB 2 port; port 1 is a USB 3 port/);
});

test('the guest enumerating it on the USB 2 port reads high-speed descriptors: bcdUSB 2.10, EP0 64 bytes, bulk 512', () => {
  const { d, toHost, router, ask } = harness();
  const r = ask({ op: 'attach', device: hostDevice(9, null, 5) });
  assert.ok(r.ok, JSON.stringify(r));
  const slot = d.enumerate(5, 3);
  /** Runs one GET_DESCRIPTOR through the controller, answered by the "host device" with `answer`. */
  const read = (value: number, length: number, answer: Uint8Array): number[] => {
    toHost.length = 0;
    d.control(slot, [0x80, 6, value, 0, length], DATA, true);
    const submit = toHost.map(([k, p]) => (k === PASSTHROUGH_KIND.SUBMIT ? decodeSubmit(p) : null)).find((s) => s !== null)!;
    assert.ok(submit, 'the GET_DESCRIPTOR went to the VM host');
    const bytes = answer.subarray(0, length);
    router.handle(PASSTHROUGH_KIND.DATA, encodeData({ handle: 9, instance: submit.instance, id: submit.id, offset: 0, bytes }));
    router.handle(PASSTHROUGH_KIND.DONE, encodeDone({ handle: 9, instance: submit.instance, id: submit.id, status: 'ok', actual: bytes.length }));
    const events = d.events();
    assert.ok(events.some((e) => e.code === 1 || e.code === 13), `a successful transfer event: ${JSON.stringify(events)}`);
    const got = new Uint8Array(bytes.length);
    d.dma.read(DATA, got);
    return [...got];
  };
  const device = read(0x0100, 18, STICK);
  assert.deepEqual(device.slice(0, 8), [18, 1, 0x10, 0x02, 0, 0, 0, 64]);
  assert.deepEqual(device.slice(8), SS_DEVICE.slice(8), 'IDs and the rest as the device gave them');
  // First the 9-byte header (wTotalLength unchanged), then the whole set.
  const head = read(0x0200, 9, STICK.subarray(18));
  assert.deepEqual(head, [...STICK.subarray(18, 27)]);
  const total = head[2] | (head[3] << 8);
  const whole = read(0x0200, total, STICK.subarray(18));
  assert.equal(whole.length, total);
  const maxPackets = endpointsOf(Uint8Array.from([...SS_DEVICE, ...whole])).map((e) => e.address);
  assert.deepEqual(maxPackets, [0x81, 0x02]);
  // Both bulk endpoints (bytes 4-5 of each endpoint descriptor) read 512; the companions are untouched.
  assert.deepEqual([whole[18 + 4], whole[18 + 5], whole[31 + 4], whole[31 + 5]], [0x00, 0x02, 0x00, 0x02]);
  assert.deepEqual(whole.slice(25, 31), companion(15, 0));
});

test('fuzz: random descriptor chains and answers never throw past a sentence, loop, or change a byte outside the answer', () => {
  const rng = new Prng(0x5eed0b2);
  const cases = fuzzCases(2000);
  for (let i = 0; i < cases; i++) {
    // Mostly well-formed pieces with random bytes mixed in, so both the walk and its refusals run.
    const parts: number[] = [...SS_DEVICE];
    const pieces = rng.below(12);
    for (let p = 0; p < pieces; p++) {
      switch (rng.below(5)) {
        case 0: parts.push(...itf(rng.below(4), rng.below(3), rng.below(4))); break;
        case 1: parts.push(...ep(rng.below(256), rng.below(256), rng.below(0x10000), rng.below(16))); break;
        case 2: parts.push(...companion(rng.below(16), rng.below(256))); break;
        case 3: parts.push(...config(1 + rng.below(3), [])); break;
        default: for (let b = rng.below(8); b > 0; b--) parts.push(rng.below(256));
      }
    }
    const raw = Uint8Array.from(parts);
    const refusal = usb2RefusalOf(raw);
    assert.ok(refusal === null || typeof refusal === 'string');
    const buffer = new Uint8Array(raw.length + 16).fill(0xa5);
    buffer.set(raw);
    const length = rng.below(raw.length + 1);
    const value = rng.pick([0x0100, 0x0200, 0x0300, 0x0f00, rng.below(0x10000)]);
    patchDescriptorForHighSpeed({ requestType: rng.pick([0x80, 0x80, 0x81, 0xc0]), request: rng.pick([6, 6, 0]), value, index: 0, length }, buffer, length);
    assert.ok(buffer.subarray(length).every((b, k) => b === (length + k < raw.length ? raw[length + k] : 0xa5)), `case ${i}: a byte past the answer changed`);
  }
});
