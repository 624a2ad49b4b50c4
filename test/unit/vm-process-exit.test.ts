// A VM process that leaves on its own waits for its host USB devices to go back, not only
// for the machine to stop (the give-back finishes in node-usb callbacks after stop()).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { stopAndGiveBack, type StoppableHost } from '../../main/manager/vm-process-exit';

/** A host whose stop() starts a give-back that finishes `releaseMs` later, as VmHost's does. */
function fakeHost(releaseMs: number, stopFails = false): StoppableHost & { released: boolean } {
  const h = {
    released: false,
    hostUsbReleased: Promise.resolve(),
    stop(): Promise<void> {
      h.hostUsbReleased = new Promise<void>((resolve) => setTimeout(() => { h.released = true; resolve(); }, releaseMs));
      return stopFails ? Promise.reject(new Error('the machine would not stop')) : Promise.resolve();
    },
  };
  return h;
}

test('waits for the host USB devices to be given back after the machine stopped', async () => {
  const h = fakeHost(30);
  await stopAndGiveBack(h);
  assert.equal(h.released, true);
});

test('a stop that fails still waits for the give-back, then reports the failure', async () => {
  const h = fakeHost(30, true);
  await assert.rejects(stopAndGiveBack(h), /would not stop/);
  assert.equal(h.released, true);
});

test('no host: nothing to wait for', async () => {
  await stopAndGiveBack(null);
});
