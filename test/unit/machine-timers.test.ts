import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Doorbell } from '../../main/vmm/shared/channel';
import { ControlBlock } from '../../main/vmm/shared/control';
import { DeadlineKicker } from '../../main/vmm/host/deadline-kicker';
import { MachineTimers } from '../../main/vmm/machine/timers';
import { runOnThread } from '../helpers/threads';

test('a timer set on a blocked machine thread fires because the host side kicks it at the deadline', async () => {
  const control = new ControlBlock();
  const doorbell = new Doorbell();
  const kick = new Int32Array(new SharedArrayBuffer(4));
  let kicks = 0;
  // The VM host's part: sleep on the doorbell, re-arm for each published deadline.
  const kicker = new DeadlineKicker(() => control.timerDeadline, () => {
    kicks++;
    Atomics.store(kick, 0, 1);
    Atomics.notify(kick, 0);
  });
  let serving = true;
  const serve = (async () => {
    while (serving) {
      const seen = doorbell.value;
      kicker.update();
      await doorbell.wait(seen);
    }
  })();
  const result = await runOnThread<{ fired: boolean; kicks: number }>({
    role: 'timer-machine', control: control.buffer, doorbell: doorbell.buffer, kick: kick.buffer, delayMs: 30,
  });
  serving = false;
  doorbell.ring();
  await serve;
  kicker.stop();
  assert.equal(result.fired, true, 'the timer ran on the machine thread');
  assert.ok(result.kicks >= 1 && kicks >= 1);
  assert.equal(control.timerDeadline, 0, 'no deadline is left published');
});

test('machine timers publish only changes of the earliest deadline and run due ones in order', async () => {
  const published: number[] = [];
  const timers = new MachineTimers((d) => published.push(d));
  const ran: string[] = [];
  timers.set(10000, () => ran.push('late'));
  const first = published[0];
  timers.set(20000, () => ran.push('later')); // not earlier: nothing published
  assert.equal(published.length, 1);
  const cancel = timers.set(0, () => ran.push('cancelled'));
  assert.equal(published.length, 2);
  cancel();
  assert.deepEqual(published.slice(2), [first], 'cancelling the earliest re-publishes the next');
  timers.set(0, () => ran.push('due'));
  await new Promise((resolve) => setTimeout(resolve, 5));
  // The event-loop timer may have run it already; runDue runs it if not, and only once.
  timers.runDue();
  timers.runDue();
  assert.deepEqual(ran, ['due']);
  assert.equal(timers.nextDeadline, first);
  timers.clear();
  assert.equal(published[published.length - 1], 0);
  assert.equal(timers.nextDeadline, 0);
});
