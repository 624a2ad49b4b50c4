// The live host USB list (main/host/host-usb-watch.ts) with a fake hotplug source and fake timers.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  HOST_USB_POLL_MS, HOST_USB_SETTLE_MS, HOST_USB_SLOW_POLL_MS, HostUsbWatch, type HostUsbChangeSource, type HostUsbWatchTimers,
} from '../../main/host/host-usb-watch';

class FakeTimers implements HostUsbWatchTimers {
  next = 1;
  readonly timeouts = new Map<number, () => void>();
  readonly intervals = new Map<number, { fn: () => void; ms: number }>();
  setTimeout(fn: () => void): unknown {
    this.timeouts.set(this.next, fn);
    return this.next++;
  }
  clearTimeout(h: unknown): void {
    this.timeouts.delete(h as number);
  }
  setInterval(fn: () => void, ms: number): unknown {
    this.intervals.set(this.next, { fn, ms });
    return this.next++;
  }
  clearInterval(h: unknown): void {
    this.intervals.delete(h as number);
  }
  fireTimeouts(): void {
    const all = [...this.timeouts.values()];
    this.timeouts.clear();
    all.forEach((f) => f());
  }
  tick(): void {
    [...this.intervals.values()].forEach((i) => i.fn());
  }
}

class FakeSource implements HostUsbChangeSource {
  onChange: (() => void) | null = null;
  starts = 0;
  constructor(readonly works: boolean) {}
  start(onChange: () => void): (() => void) | null {
    this.starts++;
    if (!this.works) return null;
    this.onChange = onChange;
    return () => { this.onChange = null; };
  }
}

test('hotplug: watchers get the list at once, then once per settled change; the slow poll catches silent changes', () => {
  let devices = ['1-1'];
  let lists = 0;
  const timers = new FakeTimers();
  const source = new FakeSource(true);
  const watch = new HostUsbWatch(() => { lists++; return [...devices]; }, source, timers);
  const a: string[][] = [];
  const b: string[][] = [];
  const stopA = watch.watch((d) => a.push(d));
  assert.equal(watch.hotplug, true);
  assert.deepEqual(a, [['1-1']]);
  assert.deepEqual([...timers.intervals.values()].map((i) => i.ms), [HOST_USB_SLOW_POLL_MS]);
  const stopB = watch.watch((d) => b.push(d));
  assert.deepEqual(b, [['1-1']], 'a second watcher gets the current list without a new listing');
  assert.equal(lists, 1);
  assert.equal(source.starts, 1, 'one source for all watchers');
  // Attach then detach events in a burst: one listing after the settle delay.
  devices = ['1-1', '1-2'];
  source.onChange?.();
  source.onChange?.();
  assert.equal(timers.timeouts.size, 1, `one pending ${HOST_USB_SETTLE_MS} ms settle timer`);
  assert.equal(a.length, 1);
  timers.fireTimeouts();
  assert.deepEqual(a, [['1-1'], ['1-1', '1-2']]);
  assert.deepEqual(b, [['1-1'], ['1-1', '1-2']]);
  timers.tick();
  assert.equal(a.length, 2, 'nothing changed: nothing sent');
  devices = ['1-2'];
  timers.tick();
  assert.deepEqual(a.at(-1), ['1-2'], 'the poll saw a change no event announced');
  stopA();
  assert.notEqual(source.onChange, null, 'b still watches');
  watch.refresh();
  stopB();
  assert.equal(source.onChange, null, 'the last watcher gone: the source stops');
  assert.equal(timers.intervals.size, 0);
  const before = lists;
  watch.refresh();
  assert.equal(lists, before, 'no watchers: no listing');
});

test('without hotplug, sysfs is polled every 2 s; a failing listing or watcher is reported, not thrown', () => {
  let fail = false;
  let devices = ['1-1'];
  const timers = new FakeTimers();
  const lines: string[] = [];
  const watch = new HostUsbWatch(() => { if (fail) throw new Error('EIO'); return devices; }, new FakeSource(false), timers, (l) => lines.push(l));
  const got: string[][] = [];
  const stopBad = watch.watch(() => { throw new Error('boom'); });
  const stop = watch.watch((d) => got.push(d));
  assert.equal(watch.hotplug, false);
  assert.deepEqual([...timers.intervals.values()].map((i) => i.ms), [HOST_USB_POLL_MS]);
  assert.deepEqual(got, [['1-1']]);
  devices = [];
  fail = true;
  timers.tick();
  assert.deepEqual(got, [['1-1']]);
  fail = false;
  timers.tick();
  assert.deepEqual(got, [['1-1'], []]);
  assert.deepEqual(lines, ['host-usb-devices watcher failed: boom', 'listing host USB devices failed: EIO', 'host-usb-devices watcher failed: boom']);
  stopBad();
  stop();
  stop();
  assert.equal(timers.intervals.size, 0);
  // Watching again starts afresh: the list is sent even if unchanged.
  const again: string[][] = [];
  watch.watch((d) => again.push(d))();
  assert.deepEqual(again, [[]]);
});
