// Host USB passthrough without a USB bus: the machine thread's PassthroughDevice (what the
// xHCI sees) and the VM host's HostUsbPassthrough, joined by a fake channel, over a fake
// HostUsbHandle that records every host call and completes transfers when the test says.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { statusOfLibusb } from '../../main/host/host-usb-handle';
import type { UsbTransfer } from '../../main/vmm/devices/usb/usb-device';
import { decodeDone, encodeDone, PASSTHROUGH_KIND } from '../../main/vmm/shared/usb-passthrough-messages';
import { CONFIG, rig, setupOf, submit, transfer } from '../helpers/usb-passthrough';

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
  assert.equal(r.host.timing.transfers, 3, 'the VM host timed each transfer libusb ran');
  assert.ok(r.host.timing.hostMs >= 0 && r.host.timing.waitMs >= 0);
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

test('SET_CONFIGURATION refused because a kernel driver took an interface back (EBUSY): drivers detached, tried once more', () => {
  const r = rig();
  r.host.take();
  r.usb.calls = [];
  r.usb.setConfigurationErrors.push(new Error('USBDEVFS_SETCONFIGURATION(1): EBUSY'));
  const setConfig = submit(r.device, transfer('control', 0, false, new Uint8Array(0), setupOf(0x00, 0x09, 1, 0, 0)));
  r.usb.drivers.set(0, true); // the host's kernel probed its driver again after the release
  r.pump();
  assert.deepEqual(r.usb.calls, ['release 0', 'release 1', 'set-configuration 1', 'detach 0', 'set-configuration 1', 'claim 0', 'claim 1']);
  r.pump();
  assert.equal(setConfig[0]?.status, 'ok');
  // Refused again with no driver to detach: the guest sees the stall.
  r.usb.calls = [];
  r.usb.drivers.set(0, false);
  r.usb.setConfigurationErrors.push(new Error('EBUSY'));
  const again = submit(r.device, transfer('control', 0, false, new Uint8Array(0), setupOf(0x00, 0x09, 1, 0, 0)));
  r.pump();
  r.pump();
  assert.deepEqual(r.usb.calls, ['release 0', 'release 1', 'set-configuration 1']);
  assert.equal(again[0]?.status, 'stall');
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
  assert.equal(r.host.timing.transfers, 0, 'a cancelled transfer is not timed');
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

test('a full channel keeps records in order and sends them when the timer runs; isochronous without usbfs on the handle is an error', () => {
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

test('a device that left the host mid-transfer: no-device completions, then release neither waits for it nor rebinds drivers, and its journal entry goes', async () => {
  const r = rig();
  r.host.take();
  const a = submit(r.device, transfer('bulk', 1, true, new Uint8Array(512)));
  r.pump();
  r.usb.complete('no-device', undefined, 0);
  r.pump();
  assert.equal(a[0].status, 'no-device');
  assert.equal(r.device.inFlight, 0, 'nothing hangs');
  r.host.markGone();
  r.usb.failAttach = true; // a gone device takes no driver: it must not be asked
  r.usb.calls = [];
  const problems = await r.host.release();
  assert.ok(!r.usb.calls.some((c) => c.startsWith('attach')), `no driver given back to a gone device: ${r.usb.calls.join(', ')}`);
  assert.deepEqual(problems, []);
  assert.deepEqual(r.journal.read().entries, [], 'the port path is free for what comes next');
});

test('DONE records carry the VM host\'s send time; the machine accounts the hop and the guest\'s idle gaps at detach', () => {
  const stamped = decodeDone(encodeDone({ handle: 7, instance: 3, id: 9, status: 'ok', actual: 13, sentAt: 1764342000123.25 }));
  assert.deepEqual(stamped, { handle: 7, instance: 3, id: 9, status: 'ok', actual: 13, sentAt: 1764342000123.25 });
  assert.equal(decodeDone(encodeDone({ handle: 7, instance: 3, id: 9, status: 'ok', actual: 13 }))?.sentAt, undefined, 'a 20-byte DONE still decodes');
  assert.equal(decodeDone(new Uint8Array(24)), null, 'no other length');
  const r = rig();
  r.host.take();
  // Two transfers one after the other: one idle gap between them (the first submit has none before it).
  for (let i = 0; i < 2; i++) {
    const done = submit(r.device, transfer('bulk', 1, true, new Uint8Array(8)));
    r.pump();
    r.usb.complete('ok', new Uint8Array(8).fill(i));
    r.pump();
    assert.equal(done[0].status, 'ok');
  }
  assert.equal(r.device.roundTrips.transfers, 2);
  assert.equal(r.device.roundTrips.doneHops, 2, 'the VM host stamps every DONE');
  assert.equal(r.device.roundTrips.gaps, 1);
  r.device.detach();
  assert.ok(r.logs.some((l) => /2 transfers, \d+ µs per transfer from submit to the VM host's DONE \(machine thread\); \d+ µs of it from the DONE's send to its drain; \d+ µs per idle gap from a DONE to the guest's next submit \(1 gaps\)/.test(l)), r.logs.join('\n'));
});
