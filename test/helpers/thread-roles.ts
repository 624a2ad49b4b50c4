// Worker entry for the unit tests that need a second (or third) thread: a channel
// producer or consumer, a byte-ring producer, a counter incrementer, or a stand-in for
// the machine thread that sets a timer and then blocks as KVM_RUN would, or a VM host running a
// virtio-net data plane while the test's thread plays the machine.
import { parentPort, workerData } from 'node:worker_threads';
import { Channel, Doorbell } from '../../main/vmm/shared/channel';
import { ByteRing, ControlBlock } from '../../main/vmm/shared/control';
import { StatsRegistry } from '../../main/vmm/shared/stats';
import { MachineTimers } from '../../main/vmm/machine/timers';
import { HostNetDataPlane } from '../../main/vmm/host/net-dataplane';

export type ThreadRole =
  | { role: 'channel-producer'; buffer: SharedArrayBuffer; count: number }
  | { role: 'channel-consumer'; buffer: SharedArrayBuffer; count: number }
  | { role: 'ring-producer'; buffer: SharedArrayBuffer; doorbell: SharedArrayBuffer; count: number }
  | { role: 'stats-incrementer'; buffer: SharedArrayBuffer; slots: number[]; count: number }
  | { role: 'timer-machine'; control: SharedArrayBuffer; doorbell: SharedArrayBuffer; kick: SharedArrayBuffer; delayMs: number }
  | { role: 'net-dataplane-host'; block: SharedArrayBuffer; ram: SharedArrayBuffer; done: SharedArrayBuffer };

/** The payload of record `seq`: its length varies so records straddle the ring's end. */
export function payloadOf(seq: number): Uint8Array {
  const out = new Uint8Array(seq % 53);
  for (let i = 0; i < out.length; i++) out[i] = (seq + i) & 0xff;
  return out;
}

async function produceRecords(channel: Channel, count: number): Promise<number> {
  let fullTimes = 0;
  for (let seq = 0; seq < count; seq++) {
    const payload = payloadOf(seq);
    while (!channel.send(seq & 0xffff, seq % 7, payload)) {
      fullTimes++;
      await channel.waitForSpace(payload.length);
    }
  }
  return fullTimes;
}

async function consumeRecords(channel: Channel, count: number): Promise<string[]> {
  const errors: string[] = [];
  let seq = 0;
  while (seq < count) {
    await channel.waitForData();
    channel.receive((target, kind, payload) => {
      const want = payloadOf(seq);
      if (target !== (seq & 0xffff) || kind !== seq % 7 || payload.length !== want.length || payload.some((b, i) => b !== want[i])) {
        if (errors.length < 5) errors.push(`record ${seq}: target ${target} kind ${kind} ${payload.length} bytes`);
      }
      seq++;
    });
  }
  return errors;
}

function pushBytes(ring: ByteRing, count: number): number {
  let fullTimes = 0;
  const idle = new Int32Array(new SharedArrayBuffer(4));
  for (let i = 0; i < count; i++) {
    while (!ring.push(i & 0xff)) {
      // A UART would report THR busy; here the producer just retries a little later.
      fullTimes++;
      Atomics.wait(idle, 0, 0, 1);
    }
  }
  return fullTimes;
}

/** Sets one timer, then blocks in Atomics.wait (its event loop cannot run) until kicked, as vCPU 0 in KVM_RUN. */
function timerMachine(role: Extract<ThreadRole, { role: 'timer-machine' }>): { fired: boolean; kicks: number } {
  const control = new ControlBlock(role.control);
  const doorbell = new Doorbell(role.doorbell);
  const kick = new Int32Array(role.kick);
  const timers = new MachineTimers((deadline) => {
    control.timerDeadline = deadline;
    doorbell.ring();
  });
  let fired = false;
  timers.set(role.delayMs, () => { fired = true; });
  let kicks = 0;
  const started = Date.now();
  while (!fired && Date.now() - started < 20000) {
    if (Atomics.wait(kick, 0, 0, 20000) === 'timed-out') break;
    Atomics.store(kick, 0, 0);
    kicks++;
    timers.runDue();
  }
  return { fired, kicks };
}

/** Runs a data plane on guest memory `ram` (at guest address 0) until `done` holds 1; counts the frames it sent. */
async function dataPlaneHost(role: Extract<ThreadRole, { role: 'net-dataplane-host' }>): Promise<{ frames: number }> {
  let frames = 0;
  const region = { guestBase: 0, size: role.ram.byteLength, buffer: role.ram, offset: 0, readonly: false, name: 'ram' };
  const plane = new HostNetDataPlane(role.block, () => [region], null, {
    transmit: () => { frames++; },
    canTransmit: () => true,
    pauseReceive: () => {},
    failed: () => {},
    log: () => {},
  });
  const done = new Int32Array(role.done);
  while (Atomics.load(done, 0) === 0) await new Promise((r) => setTimeout(r, 5));
  await plane.close();
  return { frames };
}

async function run(role: ThreadRole): Promise<unknown> {
  switch (role.role) {
    case 'channel-producer': return { fullTimes: await produceRecords(new Channel(role.buffer), role.count) };
    case 'channel-consumer': return { errors: await consumeRecords(new Channel(role.buffer), role.count) };
    case 'ring-producer': return { fullTimes: pushBytes(new ByteRing(role.buffer, new Doorbell(role.doorbell)), role.count) };
    case 'stats-incrementer': {
      const registry = new StatsRegistry(role.buffer);
      for (let i = 0; i < role.count; i++) for (const slot of role.slots) registry.add(slot, 1 + (slot & 1));
      return {};
    }
    case 'timer-machine': return timerMachine(role);
    case 'net-dataplane-host': return dataPlaneHost(role);
  }
}

if (parentPort) {
  const port = parentPort;
  // Atomics.waitAsync does not keep a thread alive: the listener does (runOnThread ends the worker).
  port.on('message', () => undefined);
  run(workerData as ThreadRole).then((result) => port.postMessage(result), (e: Error) => port.postMessage({ error: e.message }));
}
