// Per device and endpoint USB counters (xhci/traffic-stats.ts), driven at register level:
// a driver's TRBs on a loopback device and on the emulated keyboard move bytes, transfers and
// latency under usb<port>-<kind>/ep..., and the group leaves and comes back with hot-plug.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { UsbKeyboard } from '../../main/vmm/devices/usb/hid-keyboard';
import { endpointLabel, usbStatsGroup } from '../../main/vmm/devices/usb/xhci/traffic-stats';
import { type CounterReading, StatsRegistry, StatsSampler } from '../../main/vmm/shared/stats';
import { DATA, DB, Driver, LoopbackDevice, trb } from '../helpers/xhci-driver';
import { rig } from '../helpers/usb-passthrough';

const GET_DEVICE_DESCRIPTOR: [number, number, number, number, number] = [0x80, 6, 0x100, 0, 18];

function sampler(registry: StatsRegistry): { read: () => CounterReading[] } {
  const s = new StatsSampler(registry.buffer);
  return {
    read: () => {
      s.setSchema(registry.schema);
      return s.sample().counters;
    },
  };
}

function total(counters: CounterReading[], group: string, name: string): number | undefined {
  return counters.find((c) => c.group === group && c.name === name)?.total;
}

test('counter groups and endpoint names', () => {
  assert.equal(usbStatsGroup(1, 'usb-storage stick.img'), 'usb1-storage');
  assert.equal(usbStatsGroup(5, 'usb-kbd'), 'usb5-keyboard');
  assert.equal(usbStatsGroup(2, 'usb-host 1-1.4'), 'usb2-host');
  assert.equal(usbStatsGroup(6, 'usb-serial tcp-listen:4555'), 'usb6-serial');
  assert.equal(usbStatsGroup(3, ''), 'usb3-device');
  assert.deepEqual([1, 2, 3, 4, 31].map(endpointLabel), ['ep0', 'ep1-out', 'ep1-in', 'ep2-out', 'ep15-in']);
});

test('xHCI transfers move per endpoint bytes, transfers and latency; unplug retires the group, replug brings it back', async () => {
  const registry = new StatsRegistry();
  const stats = sampler(registry);
  const d = new Driver(undefined, undefined, registry);
  d.start();
  const dev = new LoopbackDevice('high');
  d.hc.attach(6, dev);
  const slot = d.enumerate(6, 3);
  d.control(slot, GET_DEVICE_DESCRIPTOR, DATA, true);
  d.events();
  assert.equal(d.configure(slot, [[2, 2], [3, 6]]).code, 1);

  // An IN that waits for data, then 12 bytes OUT: the IN completes short, with 12.
  const inRing = d.ring(slot, 3);
  inRing.push(DATA + 0x1000, 0, 16, trb(1, (1 << 2) | (1 << 5)));
  d.w32(DB + 4 * slot, 3);
  assert.equal(dev.pendingIn, 1);
  await sleep(20);
  const out = d.ring(slot, 2);
  d.dma.write(DATA + 0x2000, new Uint8Array(12).fill(7));
  out.push(DATA + 0x2000, 0, 12, trb(1, 1 << 5));
  d.w32(DB + 4 * slot, 2);
  d.events();
  assert.equal(dev.pendingIn, 0);

  let c = stats.read();
  assert.equal(total(c, 'usb6-loopback', 'ep0-bytes'), 18);
  assert.equal(total(c, 'usb6-loopback', 'ep0-transfers'), 1);
  assert.equal(total(c, 'usb6-loopback', 'ep1-out-bytes'), 12);
  assert.equal(total(c, 'usb6-loopback', 'ep1-out-transfers'), 1);
  assert.equal(total(c, 'usb6-loopback', 'ep1-in-bytes'), 12);
  assert.equal(total(c, 'usb6-loopback', 'ep1-in-transfers'), 1);
  // The IN waited at least the 20 ms sleep between its submit and the OUT that fed it.
  assert.ok((total(c, 'usb6-loopback', 'ep1-in-latency-us') ?? 0) >= 15000, JSON.stringify(c));
  assert.equal(c.find((x) => x.group === 'usb6-loopback' && x.name === 'ep1-in-bytes')?.unit, 'bytes');

  // The emulated keyboard on a USB 2 port: its own group, from its EP0.
  const kbd = new UsbKeyboard({ speed: 'full' });
  d.hc.attach(7, kbd);
  const kslot = d.enumerate(7, 1);
  d.control(kslot, [0x80, 6, 0x100, 0, 8], DATA + 0x3000, true);
  d.events();
  c = stats.read();
  assert.equal(total(c, 'usb7-keyboard', 'ep0-bytes'), 8);
  assert.equal(total(c, 'usb7-keyboard', 'ep0-transfers'), 1);

  // Unplugged: the group leaves the samples; the keyboard's stays.
  const before = registry.version;
  d.hc.detach(6);
  assert.notEqual(registry.version, before, 'the schema changed, so the machine posts it again');
  c = stats.read();
  assert.equal(c.filter((x) => x.group === 'usb6-loopback').length, 0);
  assert.equal(total(c, 'usb7-keyboard', 'ep0-bytes'), 8);

  // The same kind on the same port again: the group comes back once it moves, totals carrying on.
  assert.equal(d.command(0, 0, 0, (trb(10) | (slot << 24)) >>> 0).code, 1, 'Disable Slot of the unplugged device');
  d.hc.attach(6, new LoopbackDevice('high'));
  d.events();
  const again = d.enumerate(6, 3);
  assert.equal(stats.read().filter((x) => x.group === 'usb6-loopback').length, 0, 'nothing moved yet');
  d.control(again, GET_DEVICE_DESCRIPTOR, DATA, true);
  d.events();
  c = stats.read();
  assert.equal(total(c, 'usb6-loopback', 'ep0-bytes'), 36);
  assert.equal(total(c, 'usb6-loopback', 'ep0-transfers'), 2);
});

test('a full registry leaves USB endpoints uncounted, and transfers still complete', () => {
  const registry = new StatsRegistry(new SharedArrayBuffer(2 * 4));
  registry.counter('xhci', 'a');
  registry.counter('xhci', 'b');
  const d = new Driver(undefined, undefined, registry);
  d.start();
  d.hc.attach(6, new LoopbackDevice('high'));
  const slot = d.enumerate(6, 3);
  d.control(slot, GET_DEVICE_DESCRIPTOR, DATA, true);
  const ev = d.events();
  assert.equal(ev.at(-1)?.code, 1);
  assert.equal(registry.schema.length, 2);
});

test('a passthrough device counts the same way: its EP0 transfer crosses to the host and back', () => {
  const registry = new StatsRegistry();
  const stats = sampler(registry);
  const d = new Driver(undefined, undefined, registry);
  d.start();
  const r = rig();
  r.host.take();
  d.hc.attach(1, r.device); // a SuperSpeed stick on a USB 3 port
  const slot = d.enumerate(1, 4);
  d.control(slot, GET_DEVICE_DESCRIPTOR, DATA, true);
  r.pump();
  assert.equal(r.usb.urbs.length, 1, 'GET_DESCRIPTOR went to the host device');
  assert.deepEqual(stats.read().filter((x) => x.group === 'usb1-host'), [], 'nothing completed yet');
  r.usb.complete('ok', new Uint8Array(18).fill(1));
  r.pump();
  d.events();
  const c = stats.read();
  assert.equal(total(c, 'usb1-host', 'ep0-bytes'), 18, JSON.stringify(c));
  assert.equal(total(c, 'usb1-host', 'ep0-transfers'), 1);
  assert.equal(typeof total(c, 'usb1-host', 'ep0-latency-us'), 'number');
});
