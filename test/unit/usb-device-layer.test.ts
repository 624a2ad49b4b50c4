// The USB device layer (UsbDeviceBase + descriptors): chapter 9 requests, descriptor layouts,
// endpoint queues, halt, cancel and reset, as a host controller drives them.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  buildDescriptors,
  stringDescriptor,
  type UsbDeviceSpec,
} from '../../main/vmm/devices/usb/descriptors';
import { UsbDeviceBase, type UsbControlResult, type UsbDataResult } from '../../main/vmm/devices/usb/usb-device-base';
import type { UsbSetup, UsbSpeed, UsbTransfer } from '../../main/vmm/devices/usb/usb-device';
import {
  control,
  enumerate,
  getDescriptor,
  makeTransfer,
  RecordingPort,
  request,
  splitDescriptors,
  submit,
} from '../helpers/usb';

const spec: UsbDeviceSpec = {
  class: 0, subclass: 0, protocol: 0,
  vendorId: 0x1d6b, productId: 0x0104, deviceVersion: 0x0100,
  manufacturer: 'Porthole', product: 'Test device', serial: 'SN-1',
  configurations: [
    {
      value: 1, name: 'Default', maxPowerMa: 100, remoteWakeup: true,
      interfaces: [
        {
          number: 0, class: 0xff, subclass: 0, protocol: 0, name: 'Data',
          classDescriptors: [Uint8Array.of(5, 0x24, 0x00, 0x10, 0x01)],
          endpoints: [
            { number: 1, in: true, kind: 'bulk', maxPacketSize: 64, interval: 0 },
            { number: 2, in: false, kind: 'bulk', maxPacketSize: 64, interval: 0 },
            { number: 3, in: true, kind: 'interrupt', maxPacketSize: 8, interval: 10 },
          ],
        },
        { number: 1, alternate: 0, class: 0xff, subclass: 1, protocol: 0, endpoints: [] },
        {
          number: 1, alternate: 1, class: 0xff, subclass: 1, protocol: 0,
          endpoints: [{ number: 4, in: false, kind: 'isochronous', maxPacketSize: 192, interval: 1 }],
        },
      ],
    },
  ],
};

/** Bulk OUT 0x02 collects bytes; bulk IN 0x81 returns them (pending while empty); interrupt IN 0x83 returns `events`. */
class LoopbackDevice extends UsbDeviceBase {
  buffered: number[] = [];
  events: number[] = [];
  cancelled: UsbTransfer[] = [];
  cleared: number[] = [];
  configs: number[] = [];
  alternates: Array<[number, number]> = [];
  resets = 0;
  vendorRequests: UsbSetup[] = [];

  constructor(speed: UsbSpeed = 'high') {
    super({ name: 'loopback', speed, spec });
  }

  push(bytes: number[]): void {
    this.buffered.push(...bytes);
    this.kick(0x81);
  }
  event(value: number): void {
    this.events.push(value);
    this.kick(0x83);
    this.requestWakeup();
  }
  stallIn(): void {
    this.haltEndpoint(0x81);
  }
  finishHead(t: UsbTransfer, result: Exclude<UsbDataResult, 'pending'>): boolean {
    return this.completeTransfer(t, result);
  }
  get state() {
    return { address: this.deviceAddress, config: this.configurationValue, wakeup: this.remoteWakeupEnabled };
  }

  protected override handleControl(setup: UsbSetup, outData: Uint8Array | null): UsbControlResult {
    if (setup.requestType === 0xc0 && setup.request === 0x01) {
      this.vendorRequests.push(setup);
      return Uint8Array.from({ length: 32 }, (_, i) => i);
    }
    if (setup.requestType === 0x40 && setup.request === 0x02 && outData) {
      this.vendorRequests.push(setup);
      this.buffered.push(...outData);
      return 'ok';
    }
    return 'stall';
  }

  protected override handleData(t: UsbTransfer, address: number): UsbDataResult {
    if (address === 0x02) {
      if (t.data[0] === 0xee) return 'stall';
      if (t.data[0] === 0xdd) return 'pending'; // finished later by completeTransfer
      this.buffered.push(...t.data);
      this.kick(0x81);
      return t.data.length;
    }
    if (address === 0x81) {
      if (this.buffered.length === 0) return 'pending';
      const n = Math.min(t.data.length, this.buffered.length);
      t.data.set(this.buffered.splice(0, n));
      return n;
    }
    if (address === 0x83) {
      if (this.events.length === 0) return 'pending';
      t.data[0] = this.events.shift() as number;
      return 1;
    }
    if (address === 0x04) return t.data.length;
    return 'stall';
  }
  protected override onTransferCancelled(t: UsbTransfer): void {
    this.cancelled.push(t);
  }
  protected override onEndpointHaltCleared(address: number): void {
    this.cleared.push(address);
  }
  protected override onConfigurationChanged(value: number): void {
    this.configs.push(value);
  }
  protected override onInterfaceChanged(itf: number, alt: number): void {
    this.alternates.push([itf, alt]);
  }
  protected override onReset(): void {
    this.resets++;
  }
}

function attached(speed: UsbSpeed = 'high') {
  const dev = new LoopbackDevice(speed);
  const port = new RecordingPort();
  dev.attach(port);
  return { dev, port };
}

function configured(speed: UsbSpeed = 'high') {
  const r = attached(speed);
  enumerate(r.dev);
  return r;
}

const bulkIn = (len: number) => makeTransfer(1, true, 'bulk', new Uint8Array(len));
const bulkOut = (bytes: number[]) => makeTransfer(2, false, 'bulk', Uint8Array.from(bytes));
const intrIn = () => makeTransfer(3, true, 'interrupt', new Uint8Array(8));

test('enumeration as a host does it: device 8 then 18 bytes, SET_ADDRESS, config 9 then all, SET_CONFIGURATION', () => {
  const { dev } = attached();
  const first = getDescriptor(dev, 1, 0, 8);
  assert.equal(first.status, 'ok');
  assert.equal(first.data.length, 8);
  assert.deepEqual([...first.data.subarray(0, 2)], [18, 1]);
  assert.equal(first.data[7], 64, 'bMaxPacketSize0');
  assert.equal(request(dev, 0x00, 0x05, 7, 0, 0).status, 'ok');
  assert.equal(dev.state.address, 7);
  const d = getDescriptor(dev, 1, 0, 18).data;
  assert.equal(d.length, 18);
  assert.equal(d[2] | (d[3] << 8), 0x0200, 'bcdUSB');
  assert.equal(d[8] | (d[9] << 8), 0x1d6b);
  assert.equal(d[10] | (d[11] << 8), 0x0104);
  assert.equal(d[12] | (d[13] << 8), 0x0100);
  assert.deepEqual([d[14], d[15], d[16], d[17]], [1, 2, 3, 1]);
  const head = getDescriptor(dev, 2, 0, 9).data;
  assert.equal(head.length, 9);
  const total = head[2] | (head[3] << 8);
  const config = getDescriptor(dev, 2, 0, total).data;
  assert.equal(config.length, total);
  // Asking for more than there is returns what there is (a short packet).
  assert.equal(getDescriptor(dev, 2, 0, 1000).data.length, total);
  assert.equal(request(dev, 0x80, 0x08, 0, 0, 1).data[0], 0);
  assert.equal(request(dev, 0x00, 0x09, 1, 0, 0).status, 'ok');
  assert.equal(request(dev, 0x80, 0x08, 0, 0, 1).data[0], 1);
  assert.deepEqual(dev.configs, [1]);
});

test('configuration descriptor layout: wTotalLength, bNumInterfaces, attributes, then interfaces, class descriptors, endpoints', () => {
  const { dev } = attached();
  const config = getDescriptor(dev, 2, 0, 255).data;
  const parts = splitDescriptors(config);
  const c = parts[0];
  assert.deepEqual([c[0], c[1]], [9, 2]);
  assert.equal(c[2] | (c[3] << 8), config.length);
  assert.equal(c[4], 2, 'bNumInterfaces counts interfaces, not alternate settings');
  assert.equal(c[5], 1);
  assert.equal(c[7], 0xa0, 'bus powered, remote wakeup');
  assert.equal(c[8], 50, '100 mA in 2 mA units');
  assert.deepEqual(parts.map((p) => p[1]), [2, 4, 0x24, 5, 5, 5, 4, 4, 5]);
  const itf = parts[1];
  assert.deepEqual([...itf], [9, 4, 0, 0, 3, 0xff, 0, 0, itf[8]]);
  assert.ok(itf[8] > 0, 'iInterface');
  assert.deepEqual([...parts[3]], [7, 5, 0x81, 2, 64, 0, 0]);
  assert.deepEqual([...parts[4]], [7, 5, 0x02, 2, 64, 0, 0]);
  assert.deepEqual([...parts[5]], [7, 5, 0x83, 3, 8, 0, 10]);
  assert.deepEqual([...parts[7]], [9, 4, 1, 1, 1, 0xff, 1, 0, 0]);
  assert.deepEqual([...parts[8]], [7, 5, 0x04, 1, 192, 0, 1]);
});

test('string descriptors: language list 0x0409 and UTF-16LE strings; unknown indices STALL', () => {
  const { dev } = attached();
  assert.deepEqual([...getDescriptor(dev, 3, 0, 255).data], [4, 3, 0x09, 0x04]);
  const product = getDescriptor(dev, 3, 2, 255, 0x0409).data;
  assert.equal(product[0], product.length);
  assert.equal(product[1], 3);
  assert.equal(Buffer.from(product.subarray(2)).toString('utf16le'), 'Test device');
  // Linux first reads 2 bytes (bLength) of a string descriptor, then all of it.
  assert.deepEqual([...getDescriptor(dev, 3, 1, 2).data], [2 + 2 * 'Porthole'.length, 3]);
  assert.equal(getDescriptor(dev, 3, 9, 255).status, 'stall');
  const long = stringDescriptor('x'.repeat(300));
  assert.equal(long.length, 254);
  assert.equal(long[0], 254);
});

test('device qualifier for high speed, STALL at full speed; BOS and companions at SuperSpeed', () => {
  const high = attached('high').dev;
  const q = getDescriptor(high, 6, 0, 10).data;
  assert.deepEqual([...q], [10, 6, 0x00, 0x02, 0, 0, 0, 64, 1, 0]);
  assert.equal(getDescriptor(high, 0x0f, 0, 5).status, 'stall');
  const full = attached('full').dev;
  assert.equal(getDescriptor(full, 6, 0, 10).status, 'stall');

  const sup = attached('super').dev;
  const d = getDescriptor(sup, 1, 0, 18).data;
  assert.equal(d[2] | (d[3] << 8), 0x0320);
  assert.equal(d[7], 9, 'bMaxPacketSize0 is 2^9 at SuperSpeed');
  assert.equal(getDescriptor(sup, 6, 0, 10).status, 'stall');
  const bosHead = getDescriptor(sup, 0x0f, 0, 5).data;
  assert.equal(bosHead[0], 5);
  assert.equal(bosHead[1], 0x0f);
  const bos = getDescriptor(sup, 0x0f, 0, bosHead[2] | (bosHead[3] << 8)).data;
  const caps = splitDescriptors(bos.subarray(5));
  assert.equal(caps.length, bosHead[4]);
  assert.deepEqual(caps.map((c) => [c[1], c[2]]), [[0x10, 2], [0x10, 3]]);
  const config = getDescriptor(sup, 2, 0, 255).data;
  const parts = splitDescriptors(config);
  assert.equal(config[2] | (config[3] << 8), config.length);
  assert.deepEqual(parts.map((p) => p[1]), [2, 4, 0x24, 5, 0x30, 5, 0x30, 5, 0x30, 4, 4, 5, 0x30]);
  assert.deepEqual([...parts[4]], [6, 0x30, 0, 0, 0, 0], 'bulk companion: wBytesPerInterval 0');
  assert.deepEqual([...parts[8]], [6, 0x30, 0, 0, 8, 0], 'interrupt companion: wBytesPerInterval = packet');
  assert.equal(config[8], Math.ceil(100 / 8), 'bMaxPower in 8 mA units');
  // SuperSpeed-only requests.
  assert.equal(request(sup, 0x00, 0x31, 40, 0, 0).status, 'ok');
  assert.equal(request(sup, 0x00, 0x30, 0, 0, 6, Uint8Array.of(1, 2, 3, 4, 5, 6)).status, 'ok');
  assert.equal(request(sup, 0x00, 0x30, 0, 0, 5, Uint8Array.of(1, 2, 3, 4, 5)).status, 'stall');
  assert.equal(request(high, 0x00, 0x31, 40, 0, 0).status, 'stall');
  assert.equal(request(high, 0x00, 0x30, 0, 0, 6, new Uint8Array(6)).status, 'stall');
  enumerate(sup);
  assert.equal(request(sup, 0x00, 0x03, 48, 0, 0).status, 'ok', 'U1_ENABLE');
  assert.equal(request(sup, 0x80, 0x00, 0, 0, 2).data[0] & 4, 4);
  assert.equal(request(sup, 0x01, 0x03, 0, 0, 0).status, 'ok', 'FUNCTION_SUSPEND');
});

test('descriptor builder: qualifier only at high speed, endpoint packet-size fields', () => {
  const set = buildDescriptors(spec, 'full');
  assert.equal(set.deviceQualifier, null);
  assert.equal(set.bos, null);
  assert.equal(set.strings.size, 6, 'language list + manufacturer, product, serial, config, interface names');
  const hsIso = buildDescriptors({
    ...spec,
    configurations: [{
      value: 1, maxPowerMa: 0, interfaces: [{
        number: 0, class: 1, subclass: 2, protocol: 0,
        endpoints: [{ number: 5, in: true, kind: 'isochronous', maxPacketSize: 1024, extraTransactions: 2, isoAttributes: 0x04, interval: 1 }],
      }],
    }],
  }, 'high');
  const ep = splitDescriptors(hsIso.configurations[0])[2];
  assert.deepEqual([...ep], [7, 5, 0x85, 0x05, 0x00, 0x14, 1]);
});

test('STALL: unknown and malformed standard requests, then EP0 works again', () => {
  const { dev } = attached();
  const stalls: Array<[number, number, number, number, number]> = [
    [0x80, 0x06, 0x0900, 0, 9], // unknown descriptor type
    [0x80, 0x06, 0x0201, 0, 9], // configuration index 1 does not exist
    [0x80, 0x06, 0x0700, 0, 9], // other-speed configuration: not offered
    [0x00, 0x06, 0x0100, 0, 0], // GET_DESCRIPTOR with an OUT direction
    [0x00, 0x05, 128, 0, 0], // address out of range
    [0x00, 0x05, 3, 1, 0], // wIndex must be 0
    [0x00, 0x09, 2, 0, 0], // no configuration 2
    [0x00, 0x09, 0x101, 0, 0], // high byte set
    [0x80, 0x00, 0, 0, 3], // GET_STATUS with wLength 3
    [0x81, 0x00, 0, 0, 2], // GET_STATUS of an interface while unconfigured
    [0x81, 0x0a, 0, 0, 1], // GET_INTERFACE while unconfigured
    [0x80, 0x0c, 0, 0, 2], // SYNCH_FRAME
    [0x00, 0x07, 0x0100, 0, 0], // SET_DESCRIPTOR
    [0x00, 0x03, 2, 0, 0], // TEST_MODE
    [0x00, 0x03, 48, 0, 0], // U1_ENABLE below SuperSpeed
    [0x80, 0x42, 0, 0, 4], // unknown standard request
    [0x60, 0x01, 0, 0, 0], // reserved request type
    [0xa1, 0x01, 0, 0, 8], // class request the device does not know
    [0x82, 0x00, 0, 0x81, 2], // GET_STATUS of an endpoint not in any current configuration
  ];
  for (const [rt, req, value, index, length] of stalls) {
    assert.equal(request(dev, rt, req, value, index, length).status, 'stall', `${rt.toString(16)}/${req.toString(16)}/${value.toString(16)}`);
    assert.equal(getDescriptor(dev, 1, 0, 18).status, 'ok');
  }
  // A SETUP whose data direction disagrees with the transfer's, or no SETUP at all.
  const wrongDir = submit(dev, makeTransfer(0, false, 'control', new Uint8Array(18), { requestType: 0x80, request: 6, value: 0x100, index: 0, length: 18 }));
  assert.equal(wrongDir.transfer.status, 'stall');
  const noSetup = submit(dev, makeTransfer(0, true, 'control', new Uint8Array(8)));
  assert.equal(noSetup.transfer.status, 'stall');
  const badSetup = submit(dev, makeTransfer(0, true, 'control', new Uint8Array(8), { requestType: 0x80, request: 6, value: 0x10000, index: -1, length: 8 }));
  assert.equal(badSetup.transfer.status, 'stall');
  const bulkOnEp0 = submit(dev, makeTransfer(0, true, 'bulk', new Uint8Array(8)));
  assert.equal(bulkOnEp0.transfer.status, 'stall');
  // SET_ADDRESS once configured is a request error.
  enumerate(dev);
  assert.equal(request(dev, 0x00, 0x05, 9, 0, 0).status, 'stall');
});

test('vendor requests reach the subclass; IN data is truncated to wLength and to the buffer', () => {
  const { dev } = configured();
  assert.deepEqual([...request(dev, 0xc0, 0x01, 0, 0, 4).data], [0, 1, 2, 3]);
  const small = submit(dev, makeTransfer(0, true, 'control', new Uint8Array(2), { requestType: 0xc0, request: 1, value: 0, index: 0, length: 16 }));
  assert.equal(small.transfer.actualLength, 2);
  const out = request(dev, 0x40, 0x02, 0, 0, 3, Uint8Array.of(7, 8, 9));
  assert.equal(out.status, 'ok');
  const t = submit(dev, bulkIn(16));
  assert.equal(t.transfer.status, 'ok');
  assert.deepEqual([...t.transfer.data.subarray(0, t.transfer.actualLength)], [7, 8, 9]);
});

test('GET_STATUS, remote wakeup feature, GET/SET_INTERFACE', () => {
  const { dev, port } = configured();
  assert.deepEqual([...request(dev, 0x80, 0x00, 0, 0, 2).data], [0, 0]);
  assert.equal(request(dev, 0x00, 0x03, 1, 0, 0).status, 'ok');
  assert.deepEqual([...request(dev, 0x80, 0x00, 0, 0, 2).data], [2, 0]);
  dev.event(1);
  assert.equal(port.wakeups, 1);
  assert.equal(request(dev, 0x00, 0x01, 1, 0, 0).status, 'ok');
  assert.deepEqual([...request(dev, 0x80, 0x00, 0, 0, 2).data], [0, 0]);
  dev.event(2);
  assert.equal(port.wakeups, 1, 'no wakeup once the guest disabled it');
  assert.deepEqual([...request(dev, 0x81, 0x00, 0, 1, 2).data], [0, 0]);
  assert.equal(request(dev, 0x81, 0x00, 0, 2, 2).status, 'stall');
  assert.deepEqual([...request(dev, 0x81, 0x0a, 0, 1, 1).data], [0]);
  // The isochronous endpoint exists only in alternate setting 1.
  assert.equal(submit(dev, makeTransfer(4, false, 'isochronous', new Uint8Array(192))).transfer.status, 'stall');
  assert.equal(request(dev, 0x01, 0x0b, 1, 1, 0).status, 'ok');
  assert.deepEqual(dev.alternates, [[1, 1]]);
  assert.deepEqual([...request(dev, 0x81, 0x0a, 0, 1, 1).data], [1]);
  const iso = submit(dev, makeTransfer(4, false, 'isochronous', new Uint8Array(192)));
  assert.equal(iso.transfer.status, 'ok');
  assert.equal(iso.transfer.actualLength, 192);
  assert.equal(request(dev, 0x01, 0x0b, 2, 1, 0).status, 'stall', 'no alternate setting 2');
  assert.equal(request(dev, 0x01, 0x0b, 0, 5, 0).status, 'stall', 'no interface 5');
  assert.equal(request(dev, 0x01, 0x0b, 0, 1, 0).status, 'ok');
  assert.equal(submit(dev, makeTransfer(4, false, 'isochronous', new Uint8Array(192))).transfer.status, 'stall');
});

test('transfers on endpoints outside the configuration, or of the wrong type, STALL; nothing works unconfigured', () => {
  const { dev } = attached();
  assert.equal(submit(dev, bulkIn(8)).transfer.status, 'stall');
  enumerate(dev);
  assert.equal(submit(dev, makeTransfer(5, true, 'bulk', new Uint8Array(8))).transfer.status, 'stall');
  assert.equal(submit(dev, makeTransfer(1, false, 'bulk', new Uint8Array(8))).transfer.status, 'stall');
  assert.equal(submit(dev, makeTransfer(1, true, 'interrupt', new Uint8Array(8))).transfer.status, 'stall');
  assert.equal(submit(dev, makeTransfer(16, true, 'bulk', new Uint8Array(8))).transfer.status, 'stall');
  // Unconfiguring takes the endpoints away again.
  assert.equal(request(dev, 0x00, 0x09, 0, 0, 0).status, 'ok');
  assert.equal(submit(dev, bulkOut([1])).transfer.status, 'stall');
});

test('pending transfers wait for data and complete in submission order', () => {
  const { dev } = configured();
  const order: UsbTransfer[] = [];
  const a = submit(dev, bulkIn(2), order);
  const b = submit(dev, bulkIn(2), order);
  const c = submit(dev, bulkIn(2), order);
  assert.equal(a.transfer.status, 'pending');
  assert.equal(order.length, 0);
  const out = submit(dev, bulkOut([1, 2, 3, 4, 5]));
  assert.equal(out.transfer.status, 'ok');
  assert.equal(out.transfer.actualLength, 5);
  assert.deepEqual(order, [a.transfer, b.transfer, c.transfer]);
  assert.deepEqual([...a.transfer.data], [1, 2]);
  assert.deepEqual([...b.transfer.data], [3, 4]);
  assert.equal(c.transfer.actualLength, 1, 'short packet');
  assert.deepEqual([a.completions, b.completions, c.completions], [1, 1, 1]);
  // An interrupt IN endpoint with nothing to say NAKs: the transfer stays pending.
  const i = submit(dev, intrIn());
  assert.equal(i.transfer.status, 'pending');
  dev.event(0x42);
  assert.equal(i.transfer.status, 'ok');
  assert.equal(i.transfer.data[0], 0x42);
});

test('asynchronous completion: completeTransfer finishes the head only, then the next runs', () => {
  const { dev } = configured();
  const order: UsbTransfer[] = [];
  const slow = submit(dev, bulkOut([0xdd]), order);
  const next = submit(dev, bulkOut([9]), order);
  assert.equal(slow.transfer.status, 'pending');
  assert.equal(next.transfer.status, 'pending', 'waits behind the head');
  assert.equal(dev.finishHead(next.transfer, 1), false, 'not the head');
  assert.equal(dev.finishHead(slow.transfer, 1), true);
  assert.deepEqual(order, [slow.transfer, next.transfer]);
  assert.equal(next.transfer.status, 'ok');
  assert.equal(dev.finishHead(slow.transfer, 1), false, 'already completed');
  assert.equal(slow.completions, 1);
});

test('halt: SET_FEATURE(ENDPOINT_HALT) and handler stalls halt until CLEAR_FEATURE; GET_STATUS shows it', () => {
  const { dev } = configured();
  const waiting = submit(dev, bulkIn(4));
  assert.equal(request(dev, 0x02, 0x03, 0, 0x81, 0).status, 'ok');
  assert.equal(waiting.transfer.status, 'stall');
  assert.deepEqual([...request(dev, 0x82, 0x00, 0, 0x81, 2).data], [1, 0]);
  assert.equal(submit(dev, bulkIn(4)).transfer.status, 'stall');
  assert.equal(request(dev, 0x02, 0x01, 0, 0x81, 0).status, 'ok');
  assert.deepEqual(dev.cleared, [0x81]);
  assert.deepEqual([...request(dev, 0x82, 0x00, 0, 0x81, 2).data], [0, 0]);
  dev.push([5]);
  assert.equal(submit(dev, bulkIn(4)).transfer.status, 'ok');

  // The handler answers 'stall': that transfer and every one queued behind it stall.
  const order: UsbTransfer[] = [];
  const bad = submit(dev, bulkOut([0xdd]), order);
  const stall = submit(dev, bulkOut([0xee]), order);
  const behind = submit(dev, bulkOut([1]), order);
  dev.finishHead(bad.transfer, 'stall');
  assert.deepEqual(order.map((t) => t.status), ['stall', 'stall', 'stall']);
  assert.deepEqual([stall.completions, behind.completions], [1, 1]);
  assert.deepEqual([...request(dev, 0x82, 0x00, 0, 0x02, 2).data], [1, 0]);
  assert.equal(request(dev, 0x02, 0x01, 0, 0x02, 0).status, 'ok');
  assert.equal(submit(dev, bulkOut([1])).transfer.status, 'ok');
  // A halt from the device itself (mass storage after a bad CBW).
  dev.stallIn();
  assert.equal(submit(dev, bulkIn(4)).transfer.status, 'stall');
  // SET_CONFIGURATION clears halts.
  assert.equal(request(dev, 0x00, 0x09, 1, 0, 0).status, 'ok');
  assert.deepEqual([...request(dev, 0x82, 0x00, 0, 0x81, 2).data], [0, 0]);
  // EP0 halt requests are accepted and change nothing; feature selectors other than HALT stall.
  assert.equal(request(dev, 0x02, 0x03, 0, 0x80, 0).status, 'ok');
  assert.equal(getDescriptor(dev, 1, 0, 18).status, 'ok');
  assert.equal(request(dev, 0x02, 0x03, 1, 0x81, 0).status, 'stall');
  assert.equal(request(dev, 0x02, 0x03, 0, 0x85, 0).status, 'stall');
});

test('cancel completes a queued transfer once with cancelled; the next one moves up', () => {
  const { dev } = configured();
  const order: UsbTransfer[] = [];
  const a = submit(dev, bulkIn(1), order);
  const b = submit(dev, bulkIn(1), order);
  const c = submit(dev, bulkIn(1), order);
  dev.cancel(b.transfer);
  assert.equal(b.transfer.status, 'cancelled');
  assert.deepEqual(dev.cancelled, [], 'b never reached the device');
  dev.cancel(a.transfer);
  assert.deepEqual(dev.cancelled, [a.transfer], 'the head had started');
  dev.cancel(a.transfer);
  assert.equal(a.completions, 1);
  dev.push([1]);
  assert.deepEqual(order, [b.transfer, a.transfer, c.transfer]);
  assert.equal(c.transfer.status, 'ok');
  dev.cancel(c.transfer);
  assert.equal(c.transfer.status, 'ok', 'cancelling a completed transfer does nothing');
  assert.equal(c.completions, 1);
});

test('reset cancels everything and returns to the default state; detach completes with no-device', () => {
  const { dev } = configured();
  assert.equal(request(dev, 0x00, 0x03, 1, 0, 0).status, 'ok');
  const a = submit(dev, bulkIn(4));
  const b = submit(dev, intrIn());
  const resetsBefore = dev.resets;
  dev.reset();
  assert.deepEqual([a.transfer.status, b.transfer.status], ['cancelled', 'cancelled']);
  assert.deepEqual(dev.state, { address: 0, config: 0, wakeup: false });
  assert.equal(dev.resets, resetsBefore + 1);
  assert.equal(submit(dev, bulkIn(4)).transfer.status, 'stall');
  enumerate(dev);
  const c = submit(dev, bulkIn(4));
  dev.detach();
  assert.equal(c.transfer.status, 'no-device');
  assert.equal(c.completions, 1);
  assert.equal(submit(dev, bulkIn(4)).transfer.status, 'no-device');
  assert.equal(control(dev, { requestType: 0x80, request: 6, value: 0x100, index: 0, length: 18 }).transfer.status, 'no-device');
});

test('a done callback may submit on the same endpoint: order holds and nothing runs twice', () => {
  const { dev } = configured();
  const seen: number[] = [];
  let more = 3;
  const onDone = (t: UsbTransfer) => {
    seen.push(t.data[0]);
    if (more-- > 0) dev.submit(makeTransfer(3, true, 'interrupt', new Uint8Array(1)), onDone);
  };
  dev.submit(intrIn(), onDone);
  for (let i = 1; i <= 5; i++) dev.event(i);
  assert.deepEqual(seen, [1, 2, 3, 4]);
});
