// Fuzz of the xHCI controller: random programs of commands, contexts, transfer TRBs, register
// writes, memory scribbles and device behaviour, from a seeded PRNG. PORTHOLE_FUZZ_CASES sets
// the number of cases (default 10^5), PORTHOLE_FUZZ_SEED the seed. Checked after every step: nothing throws, the work per
// call is bounded, the event ring the driver reads is consistent (types, cycle bits, the
// controller's enqueue pointer), and the run state and ports make sense.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DmaMemory } from '../../main/vmm/memory/dma';
import type { GuestMemory } from '../../main/vmm/memory/guest-memory';
import { transferLength, type UsbDevice, type UsbPortHost, type UsbSpeed, type UsbStatus, type UsbTransfer } from '../../main/vmm/devices/usb/usb-device';
import { Prng, fuzzCases } from '../helpers/prng';
import { UsbCaptureTap } from '../../main/vmm/devices/usb/xhci/capture';
import { parseCaptureRecord } from '../../main/vmm/host/usb-capture';
import { StatsRegistry } from '../../main/vmm/shared/stats';
import {
  CMD_RING, DATA, DB, Driver, INPUT_CTX, IR0, makeMemory, OP, OUTPUT_CTX, PORTSC, RAM_SIZE, RINGS, trb,
} from '../helpers/xhci-driver';

const CASES = Number(process.env.PORTHOLE_FUZZ_CASES ?? fuzzCases(100000));
const SEED = Number(process.env.PORTHOLE_FUZZ_SEED ?? 0x90001);
const CASES_PER_SESSION = 250;
/** DMA calls one top-level call may make: commands × context size, TDs × TRBs... generous but finite. */
const MAX_DMA_PER_CALL = 2_000_000;
const ROM_BASE = 0x100000;

class CountingDma extends DmaMemory {
  calls = 0;
  override read(gpa: number, into: Uint8Array): number { this.calls++; return super.read(gpa, into); }
  override write(gpa: number, from: Uint8Array): number { this.calls++; return super.write(gpa, from); }
  override readU32(gpa: number): number { this.calls++; return super.readU32(gpa); }
  override writeU32(gpa: number, v: number): number { this.calls++; return super.writeU32(gpa, v); }
  override check(gpa: number, length: number, forWrite = false): number { this.calls++; return super.check(gpa, length, forWrite); }
}

const STATUSES: UsbStatus[] = ['ok', 'ok', 'ok', 'ok', 'stall', 'babble', 'error', 'no-device', 'cancelled'];

class FuzzDevice implements UsbDevice {
  readonly name = 'fuzz';
  readonly vendorId = 1;
  readonly productId = 2;
  host: UsbPortHost | null = null;
  pending: { t: UsbTransfer; done: (t: UsbTransfer) => void }[] = [];
  /** Some devices take big bulk transfers as guest memory segments (a disk's zero-copy path). */
  readonly movesGuestMemory: boolean;
  constructor(readonly speed: UsbSpeed, private readonly rng: Prng) {
    this.movesGuestMemory = rng.below(2) === 0;
  }
  attach(host: UsbPortHost): void { this.host = host; }
  detach(): void { this.finishAll('no-device'); }
  reset(): void { this.finishAll('cancelled'); }
  submit(t: UsbTransfer, done: (t: UsbTransfer) => void): void {
    if (this.rng.below(3) === 0) this.pending.push({ t, done });
    else this.complete(t, done);
  }
  cancel(t: UsbTransfer): void {
    const i = this.pending.findIndex((p) => p.t === t);
    if (i < 0) return;
    const [p] = this.pending.splice(i, 1);
    t.status = 'cancelled';
    p.done(t);
  }
  completeOne(): void {
    const p = this.pending.shift();
    if (p !== undefined) this.complete(p.t, p.done);
  }
  private complete(t: UsbTransfer, done: (t: UsbTransfer) => void): void {
    t.status = this.rng.pick(STATUSES);
    const r = this.rng.below(10);
    // Device bugs included: lengths past the buffer, negative, fractional.
    const length = transferLength(t);
    t.actualLength = r < 6 ? length : r < 8 ? this.rng.below(length + 1) : this.rng.pick([-1, length + 5, 1.5]);
    if (t.in) {
      let left = Math.max(0, Math.min(length, Math.floor(t.actualLength)));
      for (const s of t.guest ?? [t.data]) {
        const n = Math.min(left, s.length);
        s.fill(0xa5, 0, n);
        left -= n;
      }
    } else if (t.guest !== undefined) {
      for (const s of t.guest) if (s.length > 0) void s[s.length - 1];
    }
    done(t);
    if (this.rng.below(50) === 0) done(t); // a buggy device calls done twice
  }
  private finishAll(status: UsbStatus): void {
    for (const p of this.pending.splice(0)) {
      p.t.status = status;
      p.done(p.t);
    }
  }
}

class Fuzzer {
  readonly d: Driver;
  readonly dma: CountingDma;
  readonly devices = new Map<number, FuzzDevice>();
  /** Register writes may have moved interrupter 0's ring away from what the driver reads. */
  eventsTrusted = true;
  cases = 0;

  constructor(readonly rng: Prng) {
    const memory: GuestMemory = makeMemory([{ guestBase: ROM_BASE, size: 0x1000, buffer: new SharedArrayBuffer(0x1000), offset: 0, readonly: true, name: 'rom' }]);
    this.dma = new CountingDma(memory);
    // A small registry: endpoint counters fill it, and a full one must change nothing for the guest.
    this.d = new Driver(memory, this.dma, new StatsRegistry(new SharedArrayBuffer(48 * 4)));
    this.d.start(this.rng.pick([16, 16, 32, 64]));
    this.d.w32(OP + 0x38, this.rng.pick([1, 8, 8, 32, 255]));
    // Half the sessions capture: every record must be one the VM host can read, and a full
    // channel (a refused record) must change nothing for the guest.
    if (this.rng.below(2) === 0) {
      this.d.hc.setCapture(new UsbCaptureTap({ portMask: 0x7ffffffe, snapLength: this.rng.pick([0, 64, 4096]) }, {
        send: (record) => {
          assert.ok(parseCaptureRecord(record) !== null, 'a capture record the VM host can read');
          this.captured++;
          return this.rng.below(8) !== 0;
        },
      }));
    }
  }

  captured = 0;

  /** A pointer a guest might give: good, misaligned, zero, outside RAM, in ROM, huge. */
  pointer(good: number): number {
    switch (this.rng.below(12)) {
      case 0: return 0;
      case 1: return good + 1 + this.rng.below(15);
      case 2: return RAM_SIZE - 8;
      case 3: return 0x7ff00000;
      case 4: return ROM_BASE + 16 * this.rng.below(256);
      case 5: return 0xfffffff0 + 0x100000000 * this.rng.below(0x100000);
      case 6: return this.rng.below(RAM_SIZE) & ~0xf;
      default: return good;
    }
  }

  bounded(what: string, fn: () => void): void {
    this.dma.calls = 0;
    fn();
    assert.ok(this.dma.calls <= MAX_DMA_PER_CALL, `${what}: ${this.dma.calls} DMA calls in one call`);
  }

  step(): void {
    const d = this.d;
    const rng = this.rng;
    if ((d.usbsts & 1) !== 0 && rng.below(4) === 0) {
      // The driver notices the halt (an error, or its own Run/Stop write) and starts over.
      this.bounded('restart', () => d.start(rng.pick([16, 32, 64])));
      this.eventsTrusted = true;
      return;
    }
    switch (rng.below(12)) {
      case 0: case 1: { // a command, with a random input context
        if (rng.below(2) === 0) this.randomInputContext();
        const type = rng.below(8) === 0 ? rng.below(64) : 9 + rng.below(15);
        const slot = rng.below(6) === 0 ? rng.below(256) : 1 + rng.below(4);
        const bits = (rng.below(2) << 9) | (rng.below(32) << 16) | (slot << 24);
        const p = this.pointer(rng.below(2) === 0 ? INPUT_CTX : RINGS + 0x400 * rng.below(8));
        d.cmd.push(p % 0x100000000 | rng.below(2), Math.floor(p / 0x100000000), rng.next(), trb(type, bits));
        this.bounded('command doorbell', () => d.w32(DB, 0));
        break;
      }
      case 2: case 3: case 4: { // transfer TRBs on some endpoint ring, then its doorbell
        const slot = 1 + rng.below(4);
        const dci = rng.below(4) === 0 ? rng.below(32) : 1 + rng.below(4);
        const ring = d.ring(slot, Math.max(1, dci));
        const n = 1 + rng.below(4);
        for (let i = 0; i < n; i++) {
          const type = rng.below(10) === 0 ? rng.below(64) : rng.pick([1, 1, 1, 2, 3, 4, 5, 7, 8, 6]);
          const length = rng.below(4) === 0 ? rng.below(0x20000) : rng.below(64);
          const flags = rng.next() & ((1 << 2) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 9) | (1 << 16) | (3 << 16));
          const buf = this.pointer(DATA + 0x100 * rng.below(64));
          const status = (length | (rng.below(4) << 22)) >>> 0;
          if (type === 6) {
            // A Link somewhere in the ring area (maybe a loop).
            ring.push(this.pointer(RINGS + 0x400 * rng.below(8) + 16 * rng.below(63)), 0, 0, trb(6, flags & ~2 | (rng.below(2) << 1)));
          } else if (type === 2) {
            ring.push(rng.next(), rng.next(), rng.below(8) === 0 ? rng.below(16) : 8, trb(2, flags | (1 << 6)));
          } else {
            ring.push(buf % 0x100000000, Math.floor(buf / 0x100000000), status, trb(type, flags));
          }
        }
        this.bounded('endpoint doorbell', () => d.w32(DB + 4 * slot, dci | (rng.below(4) === 0 ? rng.next() & 0xffff0000 : 0)));
        break;
      }
      case 5: { // a register write
        const offsets = [OP, OP + 4, OP + 0x18, OP + 0x1c, OP + 0x30, OP + 0x34, OP + 0x38, OP + 0x14,
          PORTSC(1 + rng.below(8)), PORTSC(1 + rng.below(8)) + 4, IR0 + 0x20 * (1 + rng.below(3)) + 4 * rng.below(8),
          IR0, IR0 + 4, 0x1fe0, DB + 4 * rng.below(40), 4 * rng.below(0x4000)];
        const off = rng.pick(offsets);
        let value = rng.next();
        if (off === OP) value = rng.below(16) === 0 ? 2 : rng.pick([0, 1, 5, 4, 1 | 8]);
        if (off >= IR0 && off < IR0 + 0x20 && off !== IR0 && off !== IR0 + 4) this.eventsTrusted = false;
        if (off >= IR0 && off < IR0 + 0x20 && (off === IR0 + 0x10 || off === IR0 + 0x14 || off === IR0 + 0x18 || off === IR0 + 0x1c || off === IR0 + 8)) this.eventsTrusted = false;
        if (off === OP && (value & 2)) this.eventsTrusted = false;
        const size = rng.below(8) === 0 ? rng.pick([1, 2, 8]) : 4;
        this.bounded('register write', () => d.hc.write(off, size, value));
        break;
      }
      case 6: { // scribble on rings and contexts (not on the event ring, which the checks read)
        const area = rng.pick([CMD_RING, INPUT_CTX, OUTPUT_CTX, RINGS, 0x1000]);
        const at = area + 4 * rng.below(0x400);
        d.dma.writeU32(at, rng.next());
        break;
      }
      case 7: { // devices come, go, finish transfers, wake up
        const port = 1 + rng.below(8);
        const dev = this.devices.get(port);
        const r = rng.below(6);
        if (dev === undefined) {
          const fresh = new FuzzDevice(port <= 4 ? 'super' : rng.pick(['low', 'full', 'high'] as UsbSpeed[]), rng);
          this.bounded('attach', () => d.hc.attach(port, fresh));
          this.devices.set(port, fresh);
        } else if (r === 0) {
          this.bounded('detach', () => d.hc.detach(port));
          this.devices.delete(port);
        } else if (r === 1) {
          this.bounded('wakeup', () => dev.host?.wakeup());
        } else {
          this.bounded('device completion', () => dev.completeOne());
        }
        break;
      }
      case 8: { // port reset / enable on a port that has a device
        const port = 1 + rng.below(8);
        this.bounded('port write', () => d.w32(PORTSC(port), rng.pick([1 << 4, 1 << 31, (1 << 16) | (rng.below(16) << 5), 2, 0xfe0000])));
        break;
      }
      case 9:
        this.bounded('timers', () => d.clock.advance(rng.below(3)));
        break;
      case 10: {
        const off = 4 * rng.below(0x4000);
        const v = d.hc.read(off, rng.pick([1, 2, 4, 8]));
        assert.ok(Number.isFinite(v) && v >= 0, `read 0x${off.toString(16)}`);
        break;
      }
      default: { // a well-formed Address Device / Configure Endpoint to get deeper
        const port = 1 + rng.below(8);
        if (d.hc.ports[port - 1].device === null) break;
        if (port > 4) d.w32(PORTSC(port), 1 << 4);
        this.bounded('deep', () => {
          try {
            const slot = d.enableSlot();
            d.addressDevice(slot, port, port <= 4 ? 4 : 3, rng.below(8) === 0);
            d.configure(slot, [[2, 2], [3, rng.pick([5, 6, 7])], [4, rng.pick([1, 3])]]);
            // Well-formed bulk TDs, maybe chained, maybe short.
            for (const dci of [2, 3]) {
              const ring = d.ring(slot, dci);
              const n = 1 + rng.below(3);
              for (let i = 0; i < n; i++) ring.push(DATA + 0x100 * rng.below(64), 0, 1 + rng.below(64), trb(1, (i < n - 1 ? 1 << 4 : 1 << 5) | (1 << 2)));
              d.w32(DB + 4 * slot, dci);
            }
            d.control(slot, [0x80, 6, 0x100, 0, 18], DATA, true);
          } catch {
            // A command without a completion (the controller halted) or refused: fine for a fuzz.
          }
        });
        break;
      }
    }
  }

  randomInputContext(): void {
    const d = this.d;
    const rng = this.rng;
    d.dma.writeU32(INPUT_CTX, rng.below(3) === 0 ? rng.next() : 0);
    d.dma.writeU32(INPUT_CTX + 4, rng.below(3) === 0 ? rng.next() : 3 | (rng.next() & 0xfffc));
    d.dma.writeU32(INPUT_CTX + 32, rng.below(4) === 0 ? rng.next() : (1 << 27) | ((1 + rng.below(4)) << 20));
    d.dma.writeU32(INPUT_CTX + 36, (rng.below(10) << 16) | (rng.below(4) === 0 ? rng.next() & 0xff00ffff : 0));
    for (let dci = 1; dci < 8; dci++) {
      const base = INPUT_CTX + 32 * (dci + 1);
      d.dma.writeU32(base, rng.below(4) === 0 ? rng.next() : 0);
      d.dma.writeU32(base + 4, rng.below(4) === 0 ? rng.next() : ((rng.below(3) * 512) << 16) | (rng.below(8) << 3));
      const ring = this.pointer(RINGS + 0x400 * rng.below(8));
      d.dma.writeU32(base + 8, (ring % 0x100000000) | rng.below(2));
      d.dma.writeU32(base + 12, Math.floor(ring / 0x100000000));
    }
  }

  check(): void {
    const d = this.d;
    const sts = d.usbsts;
    const cmd = d.r32(OP);
    if ((sts & 1) === 0) assert.ok(cmd & 1, 'running without Run/Stop');
    for (let p = 1; p <= 8; p++) {
      const sc = d.r32(PORTSC(p));
      assert.equal(sc & 1, d.hc.ports[p - 1].device === null ? 0 : 1, `port ${p} CCS`);
      if ((sc & 1) === 0) assert.equal(sc & 2, 0, `port ${p} enabled without a device`);
    }
    // The pages the guest reads without an exit say what the registers say.
    for (const port of d.hc.ports) {
      const word = d.registerPage[PORTSC(port.number) >>> 2];
      if (word !== port.read()) assert.fail(`PORTSC ${port.number}: 0x${word.toString(16)} in the register page, the port says 0x${port.read().toString(16)}`);
    }
    for (let w = 0; w < d.interrupterPage.length; w++) {
      if (w >= 4 * 8) {
        if (d.interrupterPage[w] !== 0) assert.fail(`interrupter page word 0x${(4 * w).toString(16)}, past the interrupters, is 0x${d.interrupterPage[w].toString(16)}`);
        continue;
      }
      if (d.interrupterPage[w] !== d.r32(IR0 + 4 * w)) assert.fail(`interrupter page word 0x${(4 * w).toString(16)}: 0x${d.interrupterPage[w].toString(16)} in memory, 0x${d.r32(IR0 + 4 * w).toString(16)} read`);
    }
    if (!this.eventsTrusted) return;
    const ir = d.hc.interrupters[0];
    const events = d.events();
    for (const e of events) assert.ok([32, 33, 34, 37].includes(e.type), `event type ${e.type}`);
    assert.ok(events.length < d.eventTrbs, 'more events than the ring holds');
    if (ir.valid) {
      assert.equal(d.eventDeq, ir.enqueue, 'the driver reads up to the enqueue pointer');
      assert.equal(d.eventCycle, ir.cycleState, 'cycle bits agree');
    }
  }
}

test(`xHCI fuzz: ${CASES} random programs of rings, contexts, TRBs and registers`, () => {
  const rng = new Prng(SEED);
  let done = 0;
  let sessions = 0;
  const totals = new Map<string, number>();
  while (done < CASES) {
    const f = new Fuzzer(new Prng(rng.next()));
    sessions++;
    for (let c = 0; c < CASES_PER_SESSION && done < CASES; c++, done++) {
      const steps = 1 + f.rng.below(4);
      for (let s = 0; s < steps; s++) f.step();
      f.check();
    }
    for (const [k, v] of f.d.counters) totals.set(k, (totals.get(k) ?? 0) + v);
    totals.set('captured', (totals.get('captured') ?? 0) + f.captured);
  }
  if (process.env.PORTHOLE_FUZZ_VERBOSE) console.log(Object.fromEntries(totals));
  // The fuzz reached the interesting paths (a smoke check of the generator, not of the controller).
  for (const name of ['commands', 'events', 'transfers', 'trb-errors', 'host-system-errors', 'transfer-errors', 'bytes-in', 'captured']) {
    assert.ok((totals.get(name) ?? 0) > 0, `the fuzz never reached ${name}`);
  }
  assert.ok(sessions > 0);
});
