import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { HostNotification } from '../../main/vmm/devices/context';
import { Uart16550 } from '../../main/vmm/devices/uart16550';
import { IrqLines } from '../../main/vmm/platform/irq';
import { Prng, fuzzCases } from '../helpers/prng';
import { FakeRing } from '../helpers/uart';

const OPERATIONS = fuzzCases(50_000);

/** Registers a guest might poke, weighted towards the interesting ones. */
const OFFSETS = [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7];
const SIZES = [1, 1, 1, 1, 1, 2, 4];

for (const seed of [1, 0xc0ffee, 20240611]) {
  test(`fuzz: two UARTs on a shared IRQ line survive ${OPERATIONS} random accesses and host events (seed ${seed})`, () => {
    const rng = new Prng(seed);
    let chipLevel = false;
    let edges = 0;
    const lines = new IrqLines((gsi, level) => {
      assert.equal(gsi, 4);
      chipLevel = level;
      if (level) edges++;
    });
    const retries: (() => void)[] = [];
    const notes: HostNotification[] = [];
    const ports = [0, 2].map((port) => {
      const ring = new FakeRing(1 + rng.below(64));
      const pin = lines.pin(4, `COM${port + 1}`);
      const uart = new Uart16550({
        port, output: ring, irq: pin,
        notifyHost: (n) => notes.push(n), scheduleRetry: (fn) => retries.push(fn),
      });
      // What the guest wrote to THR outside loopback, shadowed from the register writes.
      return { uart, ring, pin, lcr: 0, mcr: 0, sent: [] as number[], out: [] as number[] };
    });
    const line = lines.line(4);

    for (let op = 0; op < OPERATIONS; op++) {
      const p = ports[rng.below(2)];
      const kind = rng.below(100);
      if (kind < 70) {
        const offset = rng.pick(OFFSETS);
        const size = rng.pick(SIZES);
        if (rng.below(2) === 0) {
          const value = rng.next() >>> (32 - 8 * size);
          p.uart.write(offset, size, value);
          for (let i = 0; i < size; i++) {
            const reg = offset + i;
            const byte = (value >>> (8 * i)) & 0xff;
            if (reg === 3) p.lcr = byte;
            else if (reg === 4) p.mcr = byte & 0x1f;
            else if (reg === 0 && (p.lcr & 0x80) === 0 && (p.mcr & 0x10) === 0) p.sent.push(byte);
          }
        } else {
          const value = p.uart.read(offset, size);
          assert.ok(Number.isInteger(value) && value >= 0 && value < 2 ** (8 * size), `read ${value} of size ${size}`);
        }
      } else if (kind < 82) {
        const n = rng.below(10) === 0 ? rng.below(5000) : rng.below(24);
        const data = new Uint8Array(n);
        for (let i = 0; i < n; i++) data[i] = rng.below(256);
        p.uart.receive(data);
      } else if (kind < 87) {
        p.uart.setModemStatus({ cts: rng.below(2) === 1, dsr: rng.below(2) === 1, ri: rng.below(2) === 1, dcd: rng.below(2) === 1 });
      } else if (kind < 95) {
        p.out.push(...p.ring.drain());
        if (rng.below(8) === 0) p.ring.capacity = rng.below(64);
      } else {
        for (const fn of retries.splice(0)) fn();
      }
      for (const q of ports) {
        const problem = q.uart.checkInvariants();
        assert.equal(problem, null, `op ${op}: ${problem}`);
      }
      assert.equal(line.level, ports.some((q) => q.pin.level), `op ${op}: the line is the OR of its pins`);
      assert.equal(chipLevel, line.level, `op ${op}: the irqchip saw the last combined level`);
    }
    for (const p of ports) {
      p.ring.capacity = Number.POSITIVE_INFINITY;
      for (const fn of retries.splice(0)) fn();
      p.out.push(...p.ring.drain());
      assert.ok(isSubsequence(p.out, p.sent), 'transmitted bytes keep the order the guest wrote them in');
      assert.equal(p.out.length + p.uart.counters.txDropped.value <= p.sent.length, true);
    }
    // The run must have reached the interesting states, or it proves nothing.
    assert.ok(edges > 100, `only ${edges} interrupt edges`);
    assert.ok(ports.every((p) => p.out.length > 100 && p.uart.counters.rxBytes.value > 100), 'bytes moved both ways');
    assert.ok(notes.some((n) => n.type === 'serial-line') && notes.some((n) => n.type === 'serial-modem'));
    for (const n of notes) {
      if (n.type === 'serial-line') assert.ok(n.settings.baud >= 2 && n.settings.baud <= 115200, `baud ${n.settings.baud}`);
    }
  });
}

function isSubsequence(sub: number[], full: number[]): boolean {
  let j = 0;
  for (let i = 0; i < full.length && j < sub.length; i++) if (full[i] === sub[j]) j++;
  return j === sub.length;
}
