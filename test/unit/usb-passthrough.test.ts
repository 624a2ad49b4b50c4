// Host USB passthrough without a USB bus: the machine thread's PassthroughDevice (what the
// xHCI sees) and the VM host's HostUsbPassthrough, joined by a fake channel, over a fake
// HostUsbHandle that records every host call and completes transfers when the test says.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { HostCallback, HostTransferDone, HostTransferStatus, HostUsbHandle } from '../../main/host/host-usb-handle';
import { statusOfLibusb } from '../../main/host/host-usb-handle';
import type { HostUsbDeviceInfo } from '../../main/host/usb-inventory';
import { UsbJournal } from '../../main/host/usb-journal';
import { PassthroughDevice, PassthroughRouter, type HostDeviceConfig } from '../../main/vmm/devices/usb/passthrough/passthrough-device';
import type { UsbSetup, UsbTransfer, UsbTransferType } from '../../main/vmm/devices/usb/usb-device';
import { HostUsbPassthrough } from '../../main/vmm/host/usb-passthrough';
import { encodeData, encodeDone, PASSTHROUGH_KIND } from '../../main/vmm/shared/usb-passthrough-messages';
import { Prng } from '../helpers/prng';

interface HostUrb {
  address: number;
  type: string;
  buffer: Buffer;
  done: HostTransferDone;
  cancelled: boolean;
}

class FakeHandle implements HostUsbHandle {
  calls: string[] = [];
  urbs: HostUrb[] = [];
  config = 1;
  interfaces = [0, 1];
  drivers = new Map<number, boolean>([[0, true], [1, false]]);
  /** Async device calls wait here until the test runs them. */
  deferred: (() => void)[] = [];
  deferCalls = false;
  failAttach = false;
  configurationValue(): number { return this.config; }
  interfaceNumbers(): number[] { return this.interfaces; }
  kernelDriverActive(itf: number): boolean { return this.drivers.get(itf) === true; }
  detachKernelDriver(itf: number): void { this.calls.push(`detach ${itf}`); this.drivers.set(itf, false); }
  attachKernelDriver(itf: number): void {
    this.calls.push(`attach ${itf}`);
    if (this.failAttach) throw new Error('LIBUSB_ERROR_ACCESS');
    this.drivers.set(itf, true);
  }
  claimInterface(itf: number): void { this.calls.push(`claim ${itf}`); }
  private later(what: string, done: HostCallback, error: Error | null = null): void {
    this.calls.push(what);
    if (this.deferCalls) this.deferred.push(() => done(error));
    else done(error);
  }
  releaseInterface(itf: number, done: HostCallback): void { this.later(`release ${itf}`, done); }
  setConfiguration(value: number, done: HostCallback): void {
    this.later(`set-configuration ${value}`, done);
    // The kernel probes drivers for the new configuration's interfaces.
    this.config = value;
    this.drivers.set(0, true);
  }
  setInterface(itf: number, alt: number, done: HostCallback): void { this.later(`set-interface ${itf} ${alt}`, done); }
  clearHalt(ep: number, done: HostCallback): void { this.later(`clear-halt 0x${ep.toString(16)}`, done); }
  reset(done: HostCallback): void { this.later('reset', done); }
  submit(address: number, type: 'control' | 'bulk' | 'interrupt', buffer: Buffer, done: HostTransferDone): () => void {
    const urb: HostUrb = { address, type, buffer, done, cancelled: false };
    this.urbs.push(urb);
    return () => { urb.cancelled = true; };
  }
  close(): void { this.calls.push('close'); }
  /** Completes the oldest live URB: IN bytes copied in (control after the SETUP bytes). */
  complete(status: HostTransferStatus, bytes?: Uint8Array, actual?: number): HostUrb {
    const urb = this.urbs.shift() as HostUrb;
    const base = urb.type === 'control' ? 8 : 0;
    if (bytes) urb.buffer.set(bytes, base);
    urb.done(status, actual ?? bytes?.length ?? urb.buffer.length - base);
    return urb;
  }
}

const INFO: HostUsbDeviceInfo = {
  sysfsName: '1-1', busNumber: 1, deviceAddress: 2, portPath: [1], vendorId: 0x46f4, productId: 1, manufacturer: 'QEMU',
  product: 'QEMU USB HARDDRIVE', serial: 'RIGSTICK0', speed: 'super', classCode: 0, configuration: 1,
  interfaces: [{ sysfsName: '1-1:1.0', number: 0, alternate: 0, classCode: 8, subclass: 6, protocol: 0x50, driver: 'usb-storage' }],
  isHub: false, devicePath: '/dev/bus/usb/001/002', accessible: true,
};

const CONFIG: HostDeviceConfig = {
  kind: 'host', handle: 7, hostName: '1-1', product: 'QEMU QEMU USB HARDDRIVE', speed: 'super', vendorId: 0x46f4, productId: 1,
};

/** The two sides joined: records queue in each direction until `pump()` (as the channel + kick would). */
function rig(options: { channelRoom?: () => boolean } = {}) {
  const usb = new FakeHandle();
  const journal = new UsbJournal(fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-pt-')));
  const toHost: [number, Uint8Array][] = [];
  const toMachine: [number, Uint8Array][] = [];
  const timers: (() => void)[] = [];
  const logs: string[] = [];
  const router = new PassthroughRouter({
    send: (kind, payload) => {
      if (options.channelRoom && !options.channelRoom()) return false;
      toHost.push([kind, payload.slice()]);
      return true;
    },
    setTimer: (_ms, fn) => { timers.push(fn); return () => undefined; },
    log: (t) => logs.push(t),
  });
  const device = router.create(CONFIG);
  const gone: string[] = [];
  const host = new HostUsbPassthrough(INFO, CONFIG.handle, usb, {
    send: (kind, payload) => toMachine.push([kind, payload.slice()]),
    log: (t) => logs.push(t),
    gone: () => gone.push('gone'),
  }, journal, 'vm-a');
  const pump = () => {
    for (let i = 0; i < 100 && (toHost.length > 0 || toMachine.length > 0); i++) {
      for (const [k, p] of toHost.splice(0)) host.onMachineRecord(k, p);
      for (const [k, p] of toMachine.splice(0)) router.handle(k, p);
    }
  };
  device.attach({ wakeup: () => undefined, log: (t) => logs.push(t) });
  return { usb, journal, device, host, router, pump, toHost, toMachine, timers, logs, gone };
}

function transfer(type: UsbTransferType, endpoint: number, dirIn: boolean, data: Uint8Array, setup: UsbSetup | null = null): UsbTransfer {
  return { endpoint, in: dirIn, type, setup, data, status: 'pending', actualLength: 0 };
}

function setupOf(requestType: number, request: number, value: number, index: number, length: number): UsbSetup {
  return { requestType, request, value, index, length };
}

function submit(device: PassthroughDevice, t: UsbTransfer): UsbTransfer[] {
  const done: UsbTransfer[] = [];
  device.submit(t, (x) => done.push(x));
  return done;
}

test('taking a device: the journal names the driver first, then drivers are detached and interfaces claimed; release gives them back', async () => {
  const r = rig();
  r.host.take();
  assert.deepEqual(r.usb.calls, ['detach 0', 'claim 0', 'claim 1'], 'interface 1 had no driver: nothing to detach');
  const { entries } = r.journal.read();
  assert.equal(entries.length, 1);
  assert.equal(entries[0].pid, process.pid);
  assert.deepEqual(entries[0].interfaces, [{ sysfsName: '1-1:1.0', number: 0, driver: 'usb-storage' }]);
  r.usb.calls = [];
  assert.deepEqual(await r.host.release(), []);
  assert.deepEqual(r.usb.calls, ['release 0', 'release 1', 'attach 0', 'close']);
  assert.deepEqual(r.journal.read().entries, [], 'the entry is gone once the device is back');
  assert.deepEqual(await r.host.release(), [], 'a second release does nothing');
});

test('a driver that cannot be given back leaves the journal entry (the manager repairs it) and says why', async () => {
  const r = rig();
  r.host.take();
  r.usb.failAttach = true;
  const problems = await r.host.release();
  assert.equal(problems.length, 1);
  assert.match(problems[0], /^usb-host 1-1: interface 1-1:1\.0 got no driver back \(usb-storage\): LIBUSB_ERROR_ACCESS; /);
  assert.equal(r.journal.read().entries.length, 1);
});

test('bulk IN and OUT larger than a record cross in chunks, byte for byte, several in flight per endpoint, in order', () => {
  const r = rig();
  r.host.take();
  const out = new Uint8Array(400000).map((_, i) => (i * 7) & 0xff);
  const outDone = submit(r.device, transfer('bulk', 2, false, out));
  const in1 = transfer('bulk', 1, true, new Uint8Array(600000));
  const in2 = transfer('bulk', 1, true, new Uint8Array(512));
  const inDone: UsbTransfer[] = [];
  r.device.submit(in1, (x) => inDone.push(x));
  r.device.submit(in2, (x) => inDone.push(x));
  r.pump();
  assert.equal(r.usb.urbs.length, 3, 'all three are on the host at once');
  assert.deepEqual(r.usb.urbs.map((u) => [u.address, u.type, u.buffer.length]), [[0x02, 'bulk', 400000], [0x81, 'bulk', 600000], [0x81, 'bulk', 512]]);
  assert.deepEqual(r.usb.urbs[0].buffer, Buffer.from(out));
  r.usb.complete('ok', undefined, 400000);
  const inBytes = new Uint8Array(545000).map((_, i) => (i * 13 + 1) & 0xff);
  r.usb.complete('ok', inBytes);
  r.usb.complete('ok', new Uint8Array(13).fill(0xab));
  r.pump();
  assert.equal(outDone.length, 1);
  assert.equal(outDone[0].status, 'ok');
  assert.equal(outDone[0].actualLength, 400000);
  assert.deepEqual(inDone, [in1, in2]);
  assert.equal(in1.actualLength, 545000, 'a short packet');
  assert.deepEqual(in1.data.subarray(0, 545000), inBytes);
  assert.ok(in1.data.subarray(545000).every((b) => b === 0));
  assert.equal(in2.actualLength, 13);
  assert.equal(r.device.inFlight, 0);
  assert.equal(r.host.inFlight, 0);
});

test('control transfers: SET_ADDRESS stays on the machine; the data stage crosses; a stall comes back as stall', () => {
  const r = rig();
  r.host.take();
  const addr = submit(r.device, transfer('control', 0, false, new Uint8Array(0), setupOf(0x00, 0x05, 3, 0, 0)));
  assert.equal(addr[0].status, 'ok');
  assert.equal(r.toHost.length, 0, 'nothing sent for SET_ADDRESS');
  const desc = transfer('control', 0, true, new Uint8Array(18), setupOf(0x80, 0x06, 0x0100, 0, 18));
  const got = submit(r.device, desc);
  r.pump();
  assert.deepEqual([...r.usb.urbs[0].buffer.subarray(0, 8)], [0x80, 0x06, 0x00, 0x01, 0, 0, 18, 0]);
  assert.equal(r.usb.urbs[0].address, 0);
  r.usb.complete('ok', Uint8Array.from([18, 1, 0x20, 3]));
  r.pump();
  assert.equal(got[0].status, 'ok');
  assert.equal(got[0].actualLength, 4);
  assert.deepEqual([...desc.data.subarray(0, 4)], [18, 1, 0x20, 3]);
  const vendor = transfer('control', 0, false, Uint8Array.from([1, 2, 3]), setupOf(0x40, 0x33, 1, 2, 3));
  const v = submit(r.device, vendor);
  r.pump();
  assert.deepEqual([...r.usb.urbs[0].buffer], [0x40, 0x33, 1, 0, 2, 0, 3, 0, 1, 2, 3]);
  r.usb.complete('stall', undefined, 0);
  r.pump();
  assert.equal(v[0].status, 'stall');
});

test('SET_CONFIGURATION, SET_INTERFACE and CLEAR_FEATURE(ENDPOINT_HALT) become host calls; later transfers wait for them', () => {
  const r = rig();
  r.host.take();
  r.usb.calls = [];
  r.usb.deferCalls = true;
  const setConfig = submit(r.device, transfer('control', 0, false, new Uint8Array(0), setupOf(0x00, 0x09, 1, 0, 0)));
  const bulk = submit(r.device, transfer('bulk', 1, true, new Uint8Array(64)));
  r.pump();
  assert.deepEqual(r.usb.calls, ['release 0', 'release 1']);
  assert.equal(r.usb.urbs.length, 0, 'the bulk transfer waits for the configuration');
  r.usb.deferred.splice(0).forEach((f) => f());
  assert.deepEqual(r.usb.calls.slice(2), ['set-configuration 1']);
  r.usb.deferred.splice(0).forEach((f) => f());
  // The kernel probed usb-storage again for the new configuration: detached (and journalled) again.
  assert.deepEqual(r.usb.calls.slice(3), ['detach 0', 'claim 0', 'claim 1']);
  r.pump();
  assert.equal(setConfig[0]?.status, 'ok');
  assert.equal(r.usb.urbs.length, 1, 'now the bulk transfer runs');
  r.usb.complete('ok', new Uint8Array(4));
  r.pump();
  assert.equal(bulk[0]?.actualLength, 4);
  r.usb.deferCalls = false;
  r.usb.calls = [];
  const alt = submit(r.device, transfer('control', 0, false, new Uint8Array(0), setupOf(0x01, 0x0b, 1, 1, 0)));
  const halt = submit(r.device, transfer('control', 0, false, new Uint8Array(0), setupOf(0x02, 0x01, 0, 0x81, 0)));
  r.pump();
  assert.deepEqual(r.usb.calls, ['set-interface 1 1', 'clear-halt 0x81']);
  assert.equal(alt[0].status, 'ok');
  assert.equal(halt[0].status, 'ok');
});

test('cancel completes at once and stops the host URB; its late completion is dropped', () => {
  const r = rig();
  r.host.take();
  const t = transfer('bulk', 1, true, new Uint8Array(64));
  const done = submit(r.device, t);
  r.pump();
  r.device.cancel(t);
  assert.equal(done[0].status, 'cancelled');
  r.pump();
  assert.equal(r.usb.urbs[0].cancelled, true);
  r.usb.complete('cancelled', undefined, 0);
  r.pump();
  assert.equal(done.length, 1, 'completed exactly once');
  assert.equal(r.toMachine.length, 0);
});

test('a port reset cancels what is in flight and resets the host device before new transfers start', () => {
  const r = rig();
  r.host.take();
  const done = submit(r.device, transfer('bulk', 1, true, new Uint8Array(64)));
  r.pump();
  r.usb.deferCalls = true;
  r.device.reset();
  assert.equal(done[0].status, 'cancelled');
  const after = submit(r.device, transfer('bulk', 1, true, new Uint8Array(64)));
  r.pump();
  assert.equal(r.usb.urbs[0].cancelled, true);
  assert.ok(r.usb.calls.includes('reset'));
  assert.equal(r.usb.urbs.length, 1, 'the new transfer waits for the reset');
  r.usb.deferred.splice(0).forEach((f) => f());
  assert.equal(r.usb.urbs.length, 2);
  r.usb.urbs.shift();
  r.usb.complete('ok', new Uint8Array(2));
  r.pump();
  assert.equal(after[0].actualLength, 2);
});

test('detach completes everything as no-device; a relaunched machine\'s new device object supersedes the old one', () => {
  const r = rig();
  r.host.take();
  const done = submit(r.device, transfer('bulk', 1, true, new Uint8Array(64)));
  r.pump();
  r.device.detach();
  assert.equal(done[0].status, 'no-device');
  r.pump();
  assert.equal(r.usb.urbs[0].cancelled, true);
  const late = submit(r.device, transfer('bulk', 1, true, new Uint8Array(8)));
  assert.equal(late[0].status, 'no-device');
  // A reset relaunch: the same handle, a new instance. The old one's records are ignored.
  const fresh = r.router.create(CONFIG);
  fresh.attach({ wakeup: () => undefined, log: () => undefined });
  const again = submit(fresh, transfer('bulk', 1, true, new Uint8Array(8)));
  r.pump();
  r.usb.urbs.shift();
  r.usb.complete('ok', new Uint8Array(8).fill(5));
  r.pump();
  assert.equal(again[0].status, 'ok');
  // A DONE for the old instance does nothing to the new device.
  r.router.handle(PASSTHROUGH_KIND.DONE, encodeDone({ handle: 7, instance: r.device.instance, id: 1, status: 'ok', actual: 8 }));
  assert.equal(fresh.inFlight, 0);
});

test('a full channel keeps records in order and sends them when the timer runs; isochronous is refused as an error', () => {
  let room = false;
  const r = rig({ channelRoom: () => room });
  r.host.take();
  const t = transfer('bulk', 2, false, new Uint8Array(600000).fill(9));
  const done = submit(r.device, t);
  assert.equal(r.toHost.length, 0);
  assert.equal(r.timers.length, 1);
  room = true;
  r.timers.shift()?.();
  r.pump();
  assert.equal(r.usb.urbs[0].buffer.length, 600000);
  assert.ok(r.usb.urbs[0].buffer.every((b) => b === 9));
  r.usb.complete('ok', undefined, 600000);
  const iso = submit(r.device, transfer('isochronous', 3, true, new Uint8Array(192)));
  r.pump();
  assert.equal(done[0].status, 'ok');
  assert.equal(iso[0].status, 'error');
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 99].map(statusOfLibusb), ['ok', 'error', 'error', 'cancelled', 'stall', 'no-device', 'babble', 'error']);
});

test('fuzz: malformed and hostile records never throw, never write outside a buffer, and every transfer completes once', () => {
  const cases = 300 * Math.max(1, Number(process.env.PORTHOLE_FUZZ_SCALE ?? 1));
  const rng = new Prng(0x5eed);
  for (let c = 0; c < cases; c++) {
    const r = rig();
    r.host.take();
    const transfers: { t: UsbTransfer; count: number; guard: Uint8Array }[] = [];
    for (let i = 0; i < 4; i++) {
      const backing = new Uint8Array(96);
      const data = backing.subarray(16, 16 + rng.below(64));
      const t = transfer(rng.pick(['bulk', 'interrupt', 'control'] as const), rng.below(16), rng.below(2) === 1, data,
        rng.below(2) === 1 ? setupOf(rng.below(256), rng.below(256), rng.below(65536), rng.below(65536), data.length) : null);
      const entry = { t, count: 0, guard: backing };
      r.device.submit(t, () => { entry.count++; });
      transfers.push(entry);
    }
    r.pump();
    for (let i = 0; i < 20; i++) {
      const kind = 0x100 + rng.below(7);
      const bytes = new Uint8Array(rng.below(40)).map(() => rng.below(256));
      if (rng.below(2) === 1 && bytes.length >= 8) {
        new DataView(bytes.buffer).setUint32(0, 7, true);
        new DataView(bytes.buffer).setUint32(4, r.device.instance, true);
      }
      r.router.handle(kind, bytes);
      if (rng.below(3) === 0) {
        r.router.handle(PASSTHROUGH_KIND.DATA, encodeData({ handle: 7, instance: r.device.instance, id: rng.below(6), offset: rng.below(100), bytes: new Uint8Array(rng.below(80)).fill(0xee) }));
      }
      if (rng.below(4) === 0 && r.usb.urbs.length > 0) r.usb.complete(rng.pick(['ok', 'stall', 'babble', 'error', 'no-device'] as const), undefined, rng.below(200));
      if (rng.below(8) === 0) r.device.cancel(rng.pick(transfers).t);
      if (rng.below(10) === 0) r.device.reset();
      r.pump();
    }
    r.device.detach();
    r.pump();
    for (const e of transfers) {
      assert.equal(e.count, 1, `case ${c}: a transfer completed ${e.count} times`);
      assert.ok(e.t.actualLength <= e.t.data.length);
      assert.ok(e.guard.subarray(0, 16).every((b) => b === 0) && e.guard.subarray(16 + e.t.data.length).every((b) => b === 0), `case ${c}: bytes outside the buffer changed`);
    }
  }
});

test('a device that leaves the host completes its transfers as no-device and is reported gone once', () => {
  const r = rig();
  r.host.take();
  const a = submit(r.device, transfer('bulk', 1, true, new Uint8Array(64)));
  const b = submit(r.device, transfer('bulk', 2, false, new Uint8Array(64)));
  r.pump();
  r.usb.complete('no-device', undefined, 0);
  r.usb.complete('no-device', undefined, 0);
  r.pump();
  assert.equal(a[0].status, 'no-device');
  assert.equal(b[0].status, 'no-device');
  assert.deepEqual(r.gone, ['gone']);
  assert.ok(r.logs.includes('usb-host 1-1: the device left the host'));
});
