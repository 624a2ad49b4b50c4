import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IrqRouting } from '../../main/vmm/machine/irq-routing';
import { Doorbells, doorbellSpecError } from '../../main/vmm/machine/doorbells';
import { pcIrqRoutes } from '../../main/vmm/platform/mptable';
import { FakeEventFds, FakeKvm } from '../helpers/fake-irq';

function setup(maxRoutes = 4096) {
  const fds = new FakeEventFds();
  const kvm = new FakeKvm(fds, maxRoutes);
  const routing = new IrqRouting(kvm, { lineRoutes: pcIrqRoutes(), maxRoutes, eventFds: fds });
  routing.commit();
  return { fds, kvm, routing };
}

const LINE_ROUTES = pcIrqRoutes().length;
const msg = (data: number, addressLo = 0xfee00000) => ({ addressLo, addressHi: 0, data });

test('the first commit hands KVM the PC line routes only', () => {
  const { kvm, routing } = setup();
  assert.equal(kvm.commits, 1);
  assert.deepEqual(kvm.table.map((r) => r.gsi), pcIrqRoutes().map((r) => r.gsi));
  assert.ok(kvm.table.every((r) => r.irqchip && !r.msi));
  assert.equal(routing.msiRouteCount, 0);
});

test('MSI routes get GSIs above the lines, enter the table when attached, and are bound after the commit', () => {
  const { kvm, fds, routing } = setup();
  const a = routing.createMsiRoute();
  const b = routing.createMsiRoute();
  assert.equal(a.gsi, 24);
  assert.equal(b.gsi, 25);
  assert.notEqual(a.eventFd, b.eventFd);
  assert.equal(kvm.commits, 1, 'allocating a route changes nothing in KVM');
  assert.equal(a.attached, false);

  kvm.calls.length = 0;
  a.attach(msg(0x41));
  assert.deepEqual(kvm.calls, ['routing', `assign ${a.eventFd} 24`], 'the route is in the table before the eventfd is bound');
  assert.equal(a.attached, true);
  assert.deepEqual(kvm.table.at(-1), { gsi: 24, irqchip: undefined, msi: msg(0x41) });
  assert.equal(kvm.table.length, LINE_ROUTES + 1, 'an unattached route has no entry');

  fds.write(a.eventFd); // as a VM host backend would
  assert.deepEqual(kvm.messages, [msg(0x41)]);
  a.trigger();
  assert.deepEqual(kvm.messages, [msg(0x41), msg(0x41)]);
  assert.equal(fds.counters.get(a.eventFd), 0, 'KVM consumed the writes');
});

test('re-attaching the same message commits nothing; a new message commits once', () => {
  const { kvm, routing } = setup();
  const r = routing.createMsiRoute();
  r.attach(msg(0x50));
  const commits = kvm.commits;
  r.attach(msg(0x50));
  assert.equal(kvm.commits, commits);
  r.attach(msg(0x51, 0xfee01000));
  assert.equal(kvm.commits, commits + 1);
  assert.deepEqual(kvm.table.find((e) => e.gsi === r.gsi)?.msi, msg(0x51, 0xfee01000));
  assert.equal(kvm.irqfds.size, 1, 'still one binding');
  r.trigger();
  assert.deepEqual(kvm.messages, [msg(0x51, 0xfee01000)]);
});

test('a detached route keeps writes in its eventfd: takePending reads and clears them', () => {
  const { kvm, fds, routing } = setup();
  const r = routing.createMsiRoute();
  r.attach(msg(0x60));
  r.detach();
  assert.equal(kvm.irqfds.size, 0);
  assert.ok(kvm.calls.includes(`deassign ${r.eventFd} ${r.gsi}`));
  fds.write(r.eventFd);
  fds.write(r.eventFd);
  assert.deepEqual(kvm.messages, []);
  assert.equal(r.takePending(), true);
  assert.equal(r.takePending(), false);
  r.detach(); // twice is harmless
  assert.equal(kvm.calls.filter((c) => c.startsWith('deassign')).length, 1);
  // Bound again with a write waiting: KVM injects it at once.
  fds.write(r.eventFd);
  r.attach(msg(0x60));
  assert.deepEqual(kvm.messages, [msg(0x60)]);
  assert.equal(r.takePending(), false, 'nothing is pending while bound');
});

test('release frees the GSI for reuse, unbinds and closes the eventfd', () => {
  const { kvm, fds, routing } = setup();
  const a = routing.createMsiRoute();
  a.attach(msg(1));
  const fd = a.eventFd;
  a.release();
  assert.equal(kvm.irqfds.size, 0);
  assert.ok(fds.closed.has(fd));
  assert.equal(routing.msiRouteCount, 0);
  a.trigger(); // a released route never writes a (possibly reused) descriptor
  assert.ok(!fds.counters.has(fd));
  assert.throws(() => a.attach(msg(1)), /released/);
  const b = routing.createMsiRoute();
  assert.equal(b.gsi, 24, 'the GSI is reused');
  b.attach(msg(2));
  assert.deepEqual(kvm.table.filter((e) => e.msi).map((e) => [e.gsi, e.msi?.data]), [[24, 2]]);
});

test('allocation stops at KVM\'s route limit and resumes after a release', () => {
  const { routing } = setup(LINE_ROUTES + 3);
  const routes = [routing.createMsiRoute(), routing.createMsiRoute(), routing.createMsiRoute()];
  assert.throws(() => routing.createMsiRoute(), RangeError);
  routes[1].release();
  const again = routing.createMsiRoute();
  assert.equal(again.gsi, routes[1].gsi);
  assert.throws(() => routing.createMsiRoute(), RangeError);
});

test('GSIs stay below KVM\'s limit even while entries remain', () => {
  // One line route on GSI 5 and a limit of 8: room for 7 entries, but only GSIs 6 and 7.
  const fds = new FakeEventFds();
  const kvm = new FakeKvm(fds, 8);
  const routing = new IrqRouting(kvm, { lineRoutes: [{ gsi: 5, irqchip: { chip: 2, pin: 5 } }], maxRoutes: 8, eventFds: fds });
  assert.deepEqual([routing.createMsiRoute().gsi, routing.createMsiRoute().gsi], [6, 7]);
  assert.throws(() => routing.createMsiRoute(), RangeError);
  assert.throws(() => new IrqRouting(kvm, { lineRoutes: pcIrqRoutes(), maxRoutes: 26, eventFds: fds }), /exceed/);
});

test('a batch commits once and binds eventfds after the commit; a bind undone inside it never reaches KVM', () => {
  const { kvm, routing } = setup();
  const routes = [0, 1, 2, 3].map(() => routing.createMsiRoute());
  kvm.calls.length = 0;
  routing.batch(() => {
    routes.forEach((r, i) => r.attach(msg(0x70 + i)));
    routes[3].detach();
    assert.deepEqual(kvm.calls, [], 'nothing reaches KVM inside the batch');
  });
  assert.deepEqual(kvm.calls, ['routing', ...routes.slice(0, 3).map((r) => `assign ${r.eventFd} ${r.gsi}`)]);
  assert.equal(routes[3].attached, false);
  // A batch that only re-binds (no message change) commits nothing.
  routing.batch(() => routes[0].detach());
  kvm.calls.length = 0;
  routing.batch(() => routes[0].attach(msg(0x70)));
  assert.deepEqual(kvm.calls, [`assign ${routes[0].eventFd} ${routes[0].gsi}`]);
  // Nested batches commit at the outermost end.
  kvm.calls.length = 0;
  routing.batch(() => {
    routing.batch(() => routes[1].attach(msg(0x99)));
    assert.deepEqual(kvm.calls, []);
  });
  assert.deepEqual(kvm.calls, ['routing']);
});

test('line irqfds: only the machine\'s lines, with or without a resample eventfd', () => {
  const { kvm, fds, routing } = setup();
  assert.throws(() => routing.lineIrqfd(24), RangeError);
  assert.throws(() => routing.lineIrqfd(-1), RangeError);
  const edge = routing.lineIrqfd(5);
  assert.equal(edge.resampleFd, null);
  assert.deepEqual(kvm.irqfds.get(edge.eventFd), { gsi: 5, resampleFd: undefined });
  const level = routing.lineIrqfd(11, { resample: true });
  assert.notEqual(level.resampleFd, null);
  assert.deepEqual(kvm.irqfds.get(level.eventFd), { gsi: 11, resampleFd: level.resampleFd });
  fds.write(edge.eventFd);
  assert.deepEqual(kvm.injected, [{ gsi: 5, msi: null }]);
  level.release();
  assert.ok(!kvm.irqfds.has(level.eventFd));
  assert.ok(fds.closed.has(level.eventFd) && fds.closed.has(level.resampleFd as number));
});

test('close ends every route and irqfd: eventfds closed, nothing new', () => {
  const { fds, routing } = setup();
  const r = routing.createMsiRoute();
  r.attach(msg(3));
  routing.createMsiRoute();
  routing.lineIrqfd(4, { resample: true });
  routing.close();
  assert.deepEqual(fds.open, []);
  assert.throws(() => routing.createMsiRoute(), /ended/);
  assert.throws(() => routing.lineIrqfd(4), /ended/);
  r.trigger();
  r.release();
  assert.equal(r.takePending(), false);
});

test('doorbell specs: widths, ranges and datamatch sizes are checked', () => {
  assert.equal(doorbellSpecError({ space: 'pio', address: 0xcf8, length: 4 }), null);
  assert.equal(doorbellSpecError({ space: 'mmio', address: 0xfe000000, length: 8, datamatch: 2 ** 40 }), null);
  assert.match(doorbellSpecError({ space: 'pio', address: 0x10, length: 8 }) ?? '', /1, 2, 4 bytes/);
  assert.match(doorbellSpecError({ space: 'mmio', address: 0, length: 3 }) ?? '', /not 3/);
  assert.match(doorbellSpecError({ space: 'pio', address: 0xffff, length: 2 }) ?? '', /outside/);
  assert.match(doorbellSpecError({ space: 'mmio', address: -8, length: 4 }) ?? '', /outside/);
  assert.match(doorbellSpecError({ space: 'mmio', address: 1.5, length: 4 }) ?? '', /outside/);
  assert.match(doorbellSpecError({ space: 'mmio', address: 2 ** 52, length: 4 }) ?? '', /outside/);
  assert.match(doorbellSpecError({ space: 'pio', address: 0x10, length: 1, datamatch: 256 }) ?? '', /does not fit/);
  assert.match(doorbellSpecError({ space: 'pio', address: 0x10, length: 2, datamatch: -1 }) ?? '', /does not fit/);
  assert.match(doorbellSpecError({ space: 'io' as 'pio', address: 0x10, length: 1 }) ?? '', /not pio or mmio/);
});

test('doorbells register ioeventfds, refuse collisions as KVM does, count rings and unregister', () => {
  const fds = new FakeEventFds();
  const kvm = new FakeKvm(fds);
  const doorbells = new Doorbells(kvm, fds);
  const plain = doorbells.register({ space: 'mmio', address: 0xfe000000, length: 4 });
  assert.deepEqual(kvm.ioeventfds, [{ address: 0xfe000000, length: 4, eventFd: plain.eventFd, pio: false, datamatch: undefined, deassign: false }]);
  assert.throws(() => doorbells.register({ space: 'mmio', address: 0xfe000000, length: 4 }), /collides/);
  assert.throws(() => doorbells.register({ space: 'mmio', address: 0xfe000000, length: 4, datamatch: 1 }), /collides/);
  const wide = doorbells.register({ space: 'mmio', address: 0xfe000000, length: 8 });
  const port = doorbells.register({ space: 'pio', address: 0x510, length: 2, datamatch: 7 });
  const port8 = doorbells.register({ space: 'pio', address: 0x510, length: 2, datamatch: 8 });
  assert.throws(() => doorbells.register({ space: 'pio', address: 0x510, length: 2 }), /collides/);
  assert.throws(() => doorbells.register({ space: 'pio', address: 0x510, length: 3 }), RangeError);
  assert.equal(doorbells.count, 4);

  for (let i = 0; i < 3; i++) assert.equal(kvm.guestWrite(false, 0xfe000000, 4, i), true);
  assert.equal(kvm.guestWrite(true, 0x510, 2, 7), true);
  assert.equal(kvm.guestWrite(true, 0x510, 2, 9), false, 'an unmatched value exits');
  assert.equal(plain.takeCount(), 3);
  assert.equal(plain.takeCount(), 0);
  assert.equal(port.takeCount(), 1);
  assert.equal(port8.takeCount(), 0);

  port.release();
  assert.equal(kvm.guestWrite(true, 0x510, 2, 7), false);
  assert.ok(fds.closed.has(port.eventFd));
  assert.equal(port.takeCount(), 0);
  port.release();
  assert.equal(kvm.calls.filter((c) => c.startsWith('ioeventfd deassign')).length, 1);
  // The same spec can be registered again once released.
  doorbells.register({ space: 'pio', address: 0x510, length: 2, datamatch: 7 });
  doorbells.close();
  assert.deepEqual(fds.open, []);
  assert.throws(() => doorbells.register({ space: 'pio', address: 0x80, length: 1 }), /ended/);
  assert.ok(wide.eventFd > 0);
});
