// The usbfs completion poller (native/usbfs-poller.ts): completions are noticed by a poll(2) that
// waits (here a fake one the test resolves), never by a timer ticking while a URB is pending.
import assert from 'node:assert/strict';
import { mock, test } from 'node:test';
import { BACKOFF_MAX_MS, POLLNVAL, type PolledUsbfs, type PollerOps, UsbfsPoller, usbfsPoller } from '../../native/usbfs-poller';
import { close, EFD_CLOEXEC, EFD_NONBLOCK, eventfd, POLLHUP, POLLIN, POLLOUT } from '../../native/libc';

const WAKE_FD = 100;

class FakeDevice implements PolledUsbfs {
  urbsInFlight = 0;
  completed = 0;
  reaps = 0;
  revents: number[] = [];
  constructor(public fd: number) {}
  reapAll(revents: number): void {
    this.reaps++;
    this.revents.push(revents);
    const n = Math.min(this.completed, this.urbsInFlight);
    this.urbsInFlight -= n;
    this.completed -= n;
  }
}

interface PendingPoll {
  fds: { fd: number; events: number }[];
  timeoutMs: number;
  resolve: (r: number[]) => void;
  reject: (e: Error) => void;
}

class FakeOps implements PollerOps {
  readonly wakeFd = WAKE_FD;
  polls: PendingPoll[] = [];
  wakes = 0;
  drains = 0;
  poll(fds: { fd: number; events: number }[], timeoutMs: number): Promise<number[]> {
    return new Promise((resolve, reject) => this.polls.push({ fds, timeoutMs, resolve, reject }));
  }
  wake(): void {
    this.wakes++;
  }
  drainWake(): void {
    this.drains++;
  }
  get last(): PendingPoll {
    return this.polls[this.polls.length - 1];
  }
  /** Resolves the pending poll with revents per fd. */
  answer(revents: Record<number, number>): void {
    const p = this.last;
    p.resolve(p.fds.map((f) => revents[f.fd] ?? 0));
  }
}

const turns = async (n = 5): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise<void>((r) => setImmediate(r));
};

test('a pending URB costs one waiting poll, no looks, however long it waits (a usb-serial\'s bulk IN)', async () => {
  const ops = new FakeOps();
  const poller = new UsbfsPoller(ops);
  const dev = new FakeDevice(7);
  dev.urbsInFlight = 1;
  poller.watch(dev);
  await turns(50);
  assert.equal(ops.polls.length, 1, 'one poll, waiting');
  assert.deepEqual(ops.last.fds, [{ fd: WAKE_FD, events: POLLIN }, { fd: 7, events: POLLOUT }]);
  assert.equal(dev.reaps, 0, 'nothing reaped until the fd says a URB completed');
  // The URB completes: the poll returns POLLOUT, the device reaps, the loop ends (nothing in flight).
  dev.completed = 1;
  ops.answer({ 7: POLLOUT });
  await turns();
  assert.equal(dev.reaps, 1);
  assert.deepEqual(dev.revents, [POLLOUT]);
  assert.equal(dev.urbsInFlight, 0);
  assert.equal(ops.polls.length, 1, 'no poll once nothing is in flight');
  assert.equal(poller.watching, 0);
});

test('a timed-out poll polls again without reaping; a resubmit from a completion keeps the device watched', async () => {
  const ops = new FakeOps();
  const poller = new UsbfsPoller(ops);
  const dev = new FakeDevice(7);
  dev.urbsInFlight = 1;
  poller.watch(dev);
  await turns();
  ops.answer({}); // timeout
  await turns();
  assert.equal(dev.reaps, 0);
  assert.equal(ops.polls.length, 2);
  // Completion whose callback submits the next URB (the device count stays 1).
  dev.reapAll = function (this: FakeDevice, r: number) {
    this.reaps++;
    this.revents.push(r);
    poller.watch(this); // what submit does: already watched, no wake
  };
  ops.answer({ 7: POLLOUT });
  await turns();
  assert.equal(dev.reaps, 1);
  assert.equal(ops.wakes, 0, 'a watched device does not wake the poll');
  assert.equal(ops.polls.length, 3, 'still in flight: polled again');
});

test('a device that joins while a poll waits wakes it; the next poll watches both', async () => {
  const ops = new FakeOps();
  const poller = new UsbfsPoller(ops);
  const a = new FakeDevice(7);
  const b = new FakeDevice(9);
  a.urbsInFlight = 1;
  b.urbsInFlight = 2;
  poller.watch(a);
  await turns();
  poller.watch(b);
  assert.equal(ops.wakes, 1);
  ops.answer({ [WAKE_FD]: POLLIN });
  await turns();
  assert.equal(ops.drains, 1);
  assert.equal(a.reaps + b.reaps, 0);
  assert.deepEqual(ops.last.fds.map((f) => f.fd), [WAKE_FD, 7, 9]);
  b.completed = 2;
  ops.answer({ 9: POLLOUT });
  await turns();
  assert.equal(b.reaps, 1);
  assert.equal(a.reaps, 0);
  assert.deepEqual(ops.last.fds.map((f) => f.fd), [WAKE_FD, 7], 'b has nothing in flight: left out');
});

test('HUP with nothing to reap (a device gone) stops its watch instead of spinning; a closed fd is skipped', async () => {
  const ops = new FakeOps();
  const poller = new UsbfsPoller(ops);
  const gone = new FakeDevice(7);
  const closing = new FakeDevice(9);
  gone.urbsInFlight = 1;
  closing.urbsInFlight = 1;
  poller.watch(gone);
  poller.watch(closing);
  await turns();
  ops.answer({ [WAKE_FD]: POLLIN });
  await turns();
  closing.fd = -1; // closed while the worker waited
  ops.answer({ 7: POLLHUP, 9: POLLNVAL });
  await turns(20);
  assert.equal(gone.reaps, 1);
  assert.equal(closing.reaps, 0, 'a closed device is not reaped');
  assert.equal(poller.watching, 0);
  assert.equal(ops.polls.length, 2, 'no further polls');
});

test('if poll(2) fails, looks back off from 1 ms to the bound while nothing completes, and start over at 1 ms after one does', async () => {
  mock.timers.enable({ apis: ['setTimeout'] });
  try {
    const ops = new FakeOps();
    const poller = new UsbfsPoller(ops);
    const dev = new FakeDevice(7);
    dev.urbsInFlight = 1;
    poller.watch(dev);
    ops.last.reject(new Error('poll unavailable'));
    await turns();
    // Look times: 1, 3, 7, 15, then every BACKOFF_MAX_MS.
    const lookAt: number[] = [];
    for (let t = 1; t <= 15 + 3 * BACKOFF_MAX_MS; t++) {
      const before = poller.counts.timerLooks;
      mock.timers.tick(1);
      if (poller.counts.timerLooks > before) lookAt.push(t);
    }
    assert.deepEqual(lookAt, [1, 3, 7, 15, 15 + BACKOFF_MAX_MS, 15 + 2 * BACKOFF_MAX_MS, 15 + 3 * BACKOFF_MAX_MS]);
    // A completion and a new URB: the next look comes after 1 ms again.
    dev.completed = 1;
    dev.urbsInFlight = 2;
    const reaps = dev.reaps;
    mock.timers.tick(BACKOFF_MAX_MS);
    assert.equal(dev.reaps, reaps + 1);
    const looks = poller.counts.timerLooks;
    mock.timers.tick(1);
    assert.equal(poller.counts.timerLooks, looks + 1, 'back to 1 ms');
    assert.equal(ops.polls.length, 1, 'poll is not tried again');
  } finally {
    mock.timers.reset();
  }
});

test('the process poller, with poll(2) on a koffi worker: a ready fd is reaped and the watch ends', async () => {
  // An eventfd below its maximum is always writable: it stands for a usbfs fd with a completed URB.
  const fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  try {
    const poller = usbfsPoller();
    const dev = new FakeDevice(fd);
    dev.urbsInFlight = 1;
    dev.completed = 1;
    const reaped = new Promise<void>((resolve) => {
      dev.reapAll = function (this: FakeDevice, r: number) {
        FakeDevice.prototype.reapAll.call(this, r);
        resolve();
      };
    });
    poller.watch(dev);
    await reaped;
    assert.ok((dev.revents[0] & POLLOUT) !== 0);
    assert.equal(dev.urbsInFlight, 0);
    await turns();
    assert.equal(poller.watching, 0);
  } finally {
    close(fd);
  }
});
