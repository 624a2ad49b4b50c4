// Direct URBs (devices/usb/passthrough/direct-urbs.ts): the machine thread's PassthroughDevice
// submits control, bulk and interrupt URBs on the VM host's usbfs file itself and reaps them
// when vCPU 0 comes out of KVM_RUN, with only the device-state requests and the port reset
// crossing the channel. Faked usbfs file here (no USB bus); the real dup/adopt on a plain file.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { submitErrorStatus, UsbfsDirectUrbs } from '../../main/vmm/devices/usb/passthrough/direct-urbs';
import { PassthroughRouter } from '../../main/vmm/devices/usb/passthrough/passthrough-device';
import { PASSTHROUGH_KIND, PASSTHROUGH_MAX_TRANSFER } from '../../main/vmm/shared/usb-passthrough-messages';
import { close, open, O_CLOEXEC, O_RDWR } from '../../native/libc';
import { CONFIG, FakeDirectUrbs, rig, setupOf, submit, transfer } from '../helpers/usb-passthrough';

test('bulk IN and OUT go to usbfs from the machine thread: no SUBMIT record, reaped after a kick, IN bytes land in the guest buffer', () => {
  const urbs = new FakeDirectUrbs();
  const r = rig({ direct: urbs });
  r.host.take();
  assert.equal(r.device.directUrbs, true);
  const inT = transfer('bulk', 1, true, new Uint8Array(4096));
  const outT = transfer('bulk', 2, false, Uint8Array.from({ length: 512 }, (_, i) => i & 0xff));
  const inDone = submit(r.device, inT);
  const outDone = submit(r.device, outT);
  assert.deepEqual(r.toHost, [], 'nothing crosses the channel');
  assert.deepEqual(urbs.urbs.map((u) => [u.req.type, u.req.endpoint, u.req.data.length]), [['bulk', 0x81, 4096], ['bulk', 0x02, 512]]);
  assert.deepEqual(urbs.urbs[1].req.data, outT.data);
  // No bounce buffers: both URBs move the transfers' own buffers.
  assert.equal(urbs.urbs[0].req.data, inT.data);
  assert.equal(urbs.urbs[1].req.data, outT.data);
  assert.deepEqual(urbs.urbs.map((u) => u.req.inPlace), [true, true]);
  assert.equal(r.watched.size, 1, 'watched while URBs are in flight');
  r.kick();
  assert.equal(inDone.length, 0, 'nothing completed yet');
  urbs.urbs[0].result = { status: 'ok', actual: 13, bytes: Uint8Array.from({ length: 13 }, (_, i) => 0xa0 + i) };
  urbs.urbs[1].result = { status: 'ok', actual: 512 };
  r.kick();
  assert.equal(inDone[0].status, 'ok');
  assert.equal(inDone[0].actualLength, 13);
  assert.deepEqual([...inT.data.subarray(0, 14)], [...Array.from({ length: 13 }, (_, i) => 0xa0 + i), 0]);
  assert.equal(outDone[0].actualLength, 512);
  assert.equal(r.watched.size, 0, 'no watch once nothing is in flight');
  assert.equal(r.device.directCounts.urbs, 2);
  assert.equal(r.device.roundTrips.transfers, 2);
  assert.equal(r.usb.urbs.length, 0, 'the VM host ran no URB');
  r.device.detach();
  assert.ok(r.logs.some((l) => /2 transfers, \d+ µs per transfer .*direct URBs 2, 0 of them reaped by the backstop timer, 2 after a kick; 0 of 65536 bytes or more, - µs each/.test(l)), r.logs.join('\n'));
});

test('a 1 MiB bulk IN lands in the transfer\'s own buffer, counted as big; a reap at an exit is not counted as after a kick', () => {
  const urbs = new FakeDirectUrbs();
  const r = rig({ direct: urbs });
  r.host.take();
  const big = transfer('bulk', 1, true, new Uint8Array(1 << 20));
  const done = submit(r.device, big);
  assert.equal(urbs.urbs[0].req.data, big.data);
  const bytes = Uint8Array.from({ length: 1 << 20 }, (_, i) => (i * 7) & 0xff);
  urbs.urbs[0].result = { status: 'ok', actual: 1 << 20, bytes };
  for (const w of [...r.watched]) w.poll(false); // an exit of vCPU 0, no kick
  assert.equal(done[0].actualLength, 1 << 20);
  assert.deepEqual(big.data, bytes);
  assert.equal(r.device.directCounts.big, 1);
  assert.equal(r.device.directCounts.byKick, 0);
  r.device.detach();
  assert.ok(r.logs.some((l) => /direct URBs 1, 0 of them reaped by the backstop timer, 0 after a kick; 1 of 65536 bytes or more, \d+ µs each/.test(l)), r.logs.join('\n'));
});

test('control transfers go direct with their SETUP bytes (wLength cut to the data stage); a short or babbling reply is bounded', () => {
  const urbs = new FakeDirectUrbs();
  const r = rig({ direct: urbs });
  r.host.take();
  // GET_DESCRIPTOR(device), wLength 64 but an 18-byte data stage: usbfs gets wLength 18.
  const t = transfer('control', 0, true, new Uint8Array(18), setupOf(0x80, 0x06, 0x0100, 0, 64));
  const done = submit(r.device, t);
  assert.deepEqual([...urbs.urbs[0].req.data.subarray(0, 8)], [0x80, 0x06, 0x00, 0x01, 0, 0, 18, 0]);
  assert.equal(urbs.urbs[0].req.endpoint, 0);
  assert.equal(urbs.urbs[0].req.data.length, 26);
  // A usbfs actual past the buffer is cut to it.
  urbs.urbs[0].result = { status: 'ok', actual: 1000, bytes: Uint8Array.from({ length: 18 }, (_, i) => i + 1) };
  r.kick();
  assert.equal(done[0].actualLength, 18);
  assert.equal(t.data[17], 18);
  // Class OUT to an interface (Bulk-Only reset): direct too, with its data stage after SETUP.
  const out = transfer('control', 0, false, Uint8Array.of(9, 8, 7), setupOf(0x21, 0xff, 0, 0, 3));
  submit(r.device, out);
  assert.deepEqual([...urbs.urbs[0].req.data], [0x21, 0xff, 0, 0, 0, 0, 3, 0, 9, 8, 7]);
  assert.deepEqual(r.toHost, []);
});

test('SET_CONFIGURATION, SET_INTERFACE and CLEAR_FEATURE(halt) go to the VM host; transfers queued behind one wait for its DONE, in order', () => {
  const urbs = new FakeDirectUrbs();
  const r = rig({ direct: urbs });
  r.host.take();
  r.usb.deferCalls = true;
  const clear = submit(r.device, transfer('control', 0, false, new Uint8Array(0), setupOf(0x02, 0x01, 0, 0x81, 0)));
  const a = submit(r.device, transfer('bulk', 1, true, new Uint8Array(64)));
  const b = submit(r.device, transfer('bulk', 2, false, new Uint8Array(31)));
  assert.equal(urbs.urbs.length, 0, 'held behind the host call');
  r.pump();
  assert.ok(r.usb.calls.includes('clear-halt 0x81'));
  assert.equal(urbs.urbs.length, 0);
  r.usb.deferred.splice(0).forEach((f) => f());
  r.pump();
  assert.equal(clear[0].status, 'ok');
  assert.deepEqual(urbs.urbs.map((u) => u.req.endpoint), [0x81, 0x02], 'released in order');
  for (const u of urbs.urbs) u.result = { status: 'ok', actual: 0 };
  r.kick();
  assert.deepEqual([a[0].status, b[0].status], ['ok', 'ok']);
  // SET_INTERFACE, and a cancelled one does not hold transfers forever.
  const si = transfer('control', 0, false, new Uint8Array(0), setupOf(0x01, 0x0b, 1, 0, 0));
  submit(r.device, si);
  r.device.cancel(si);
  submit(r.device, transfer('bulk', 1, true, new Uint8Array(8)));
  assert.equal(urbs.urbs.length, 1);
});

test('a port reset discards direct URBs and holds new ones until the VM host\'s RESET_DONE', () => {
  const urbs = new FakeDirectUrbs();
  const r = rig({ direct: urbs });
  r.host.take();
  const first = submit(r.device, transfer('bulk', 1, true, new Uint8Array(64)));
  const urb = urbs.urbs[0];
  r.usb.deferCalls = true;
  r.device.reset();
  assert.equal(first[0].status, 'cancelled');
  assert.equal(urb.discarded, true);
  const after = submit(r.device, transfer('bulk', 1, true, new Uint8Array(64)));
  r.kick(); // the discarded URB is reaped; its late completion is dropped
  assert.equal(first.length, 1);
  assert.equal(urbs.urbs.length, 0, 'the new transfer waits for the reset');
  r.pump();
  assert.ok(r.usb.calls.includes('reset'));
  assert.equal(urbs.urbs.length, 0);
  r.usb.deferred.splice(0).forEach((f) => f());
  r.pump();
  assert.equal(urbs.urbs.length, 1, 'RESET_DONE released it');
  urbs.urbs[0].result = { status: 'ok', actual: 4, bytes: Uint8Array.of(1, 2, 3, 4) };
  r.kick();
  assert.equal(after[0].actualLength, 4);
  // A RESET_DONE of another instance (an older machine) releases nothing.
  r.device.reset();
  submit(r.device, transfer('bulk', 1, true, new Uint8Array(8)));
  r.toHost.length = 0;
  r.router.handle(PASSTHROUGH_KIND.RESET_DONE, Uint8Array.of(CONFIG.handle, 0, 0, 0, 1, 2, 3, 4));
  assert.equal(urbs.urbs.length, 0);
});

test('cancel (Stop Endpoint) discards the URB and completes once; detach discards the rest and closes the file', () => {
  const urbs = new FakeDirectUrbs();
  const r = rig({ direct: urbs });
  r.host.take();
  const t = transfer('bulk', 1, true, new Uint8Array(64));
  const done = submit(r.device, t);
  r.device.cancel(t);
  assert.equal(done[0].status, 'cancelled');
  assert.equal(urbs.urbs[0].discarded, true);
  urbs.urbs[0].result = { status: 'ok', actual: 64, bytes: new Uint8Array(64) };
  r.kick();
  assert.equal(done.length, 1);
  // The URB wrote into the transfer's buffer (its own, made by the xHCI for this TD alone), but
  // the cancelled transfer keeps its cancel: nothing of the late completion reaches the guest.
  assert.equal(done[0].status, 'cancelled');
  assert.equal(done[0].actualLength, 0);
  const other = submit(r.device, transfer('interrupt', 3, true, new Uint8Array(8)));
  assert.equal(urbs.urbs[0].req.type, 'interrupt');
  assert.equal(urbs.urbs[0].req.endpoint, 0x83);
  r.device.detach();
  assert.equal(other[0].status, 'no-device');
  assert.equal(urbs.closed, true);
  assert.equal(r.watched.size, 0);
  const late = submit(r.device, transfer('bulk', 1, true, new Uint8Array(8)));
  assert.equal(late[0].status, 'no-device');
});

test('guest lengths past the host limit fail without a URB; a refused submit maps its errno; ENODEV tells the VM host once', () => {
  const urbs = new FakeDirectUrbs();
  const r = rig({ direct: urbs });
  r.host.take();
  r.device.reset(); // the VM host learns the machine's instance
  r.pump();
  const big = { endpoint: 1, in: true, type: 'bulk' as const, setup: null, data: { length: PASSTHROUGH_MAX_TRANSFER + 1 } as unknown as Uint8Array, status: 'pending' as const, actualLength: 0 };
  const done = submit(r.device, big);
  assert.equal(done[0].status, 'error');
  assert.equal(urbs.urbs.length, 0);
  urbs.refuseErrno = 32;
  assert.equal(submit(r.device, transfer('bulk', 1, true, new Uint8Array(8)))[0].status, 'stall');
  urbs.refuseErrno = 22;
  assert.equal(submit(r.device, transfer('bulk', 1, true, new Uint8Array(8)))[0].status, 'error');
  urbs.refuseErrno = 19;
  assert.equal(submit(r.device, transfer('bulk', 1, true, new Uint8Array(8)))[0].status, 'no-device');
  const inflight = submit(r.device, transfer('bulk', 1, true, new Uint8Array(8)));
  urbs.urbs[0].result = { status: 'no-device', actual: 0 };
  r.kick();
  assert.equal(inflight[0].status, 'no-device');
  r.pump();
  assert.deepEqual(r.gone, ['gone'], 'reported once');
  assert.deepEqual([19, 108, 32, 22, undefined].map((errno) => submitErrorStatus({ errno })), ['no-device', 'no-device', 'stall', 'error', 'error']);
});

test('a completion no kick saw is reaped by the backstop timer, which backs off while nothing completes', () => {
  const urbs = new FakeDirectUrbs();
  const delays: number[] = [];
  const timers: (() => void)[] = [];
  const router = new PassthroughRouter({
    send: () => true,
    setTimer: (ms, fn) => { delays.push(ms); timers.push(fn); return () => undefined; },
    log: () => undefined,
    openDirect: () => urbs,
    kickWatch: { add: () => undefined, remove: () => undefined },
  });
  const device = router.create({ ...CONFIG, usbfs: { fd: 5, path: '/dev/bus/usb/001/002' } });
  device.attach({ wakeup: () => undefined, log: () => undefined });
  const done = submit(device, transfer('bulk', 1, true, new Uint8Array(8)));
  submit(device, transfer('bulk', 1, true, new Uint8Array(8)));
  (timers.shift() as () => void)();
  (timers.shift() as () => void)();
  assert.deepEqual(delays, [20, 40, 80], 'one timer at a time, doubling while idle');
  urbs.urbs[0].result = { status: 'ok', actual: 8 };
  (timers.shift() as () => void)();
  assert.equal(done[0].status, 'ok');
  assert.equal(device.directCounts.byBackstop, 1);
  assert.equal(delays.at(-1), 20, 'back to the first delay after a reap');
  urbs.urbs[0].result = { status: 'ok', actual: 8 };
  (timers.shift() as () => void)();
  assert.equal(timers.length, 0, 'no timer once nothing is in flight');
});

test('a descriptor that cannot be adopted leaves every transfer on the channel, and says why', () => {
  const r = rig({ direct: new Error('fd 99 is /dev/null, not /dev/bus/usb/001/002') });
  r.host.take();
  assert.equal(r.device.directUrbs, false);
  assert.ok(r.logs.some((l) => /transfers go through the VM host: fd 99 is \/dev\/null/.test(l)));
  const done = submit(r.device, transfer('bulk', 1, true, new Uint8Array(8)));
  r.pump();
  assert.equal(r.usb.urbs.length, 1);
  r.usb.complete('ok', Uint8Array.of(1));
  r.pump();
  assert.equal(done[0].actualLength, 1);
});

test('adopting a real descriptor: a dup checked against its path; a number that names another file is refused; usbfs ioctls on a non-usbfs file fail as errors', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-direct-'));
  const file = path.join(dir, '002');
  fs.writeFileSync(file, new Uint8Array(18));
  const fd = open(file, O_RDWR | O_CLOEXEC);
  try {
    assert.throws(() => UsbfsDirectUrbs.adopt(fd, '/dev/bus/usb/001/002'), new RegExp(`fd ${fd} is ${file.replace(/[/.]/g, '\\$&')}, not /dev/bus/usb/001/002`));
    assert.throws(() => UsbfsDirectUrbs.adopt(987654, file), /EBADF|not open/);
    const direct = UsbfsDirectUrbs.adopt(fd, file);
    let thrown: unknown = null;
    try {
      direct.submit({ type: 'bulk', endpoint: 0x81, data: new Uint8Array(8) }, () => undefined);
    } catch (e) {
      thrown = e;
    }
    assert.match(String((thrown as Error).message), /USBDEVFS_SUBMITURB\(type bulk, endpoint 0x81\).*ENOTTY/);
    assert.equal(submitErrorStatus(thrown), 'error');
    assert.equal(direct.inFlight, 0);
    assert.equal(direct.reap(), 0);
    direct.close();
    // The dup closed; the original stays open.
    assert.equal(fs.fstatSync(fd).size, 18);
  } finally {
    close(fd);
  }
});
