import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EXIT, RUN } from '../../native';
import { MmioBus, PioBus, type IoDevice, type MmioDevice } from '../../main/vmm/devices/bus';
import { ACTION, ExitDispatcher } from '../../main/vmm/machine/exits';
import { Prng } from '../helpers/prng';

const RUN_SIZE = 3 * 4096;

function runPage() {
  const bytes = new Uint8Array(RUN_SIZE);
  return { bytes, view: new DataView(bytes.buffer) };
}

class Recorder implements IoDevice, MmioDevice {
  readonly name = 'rec';
  log: string[] = [];
  read(offset: number, size: number): number { this.log.push(`r${offset}/${size}`); return 0x12345678 & (2 ** (size * 8) - 1); }
  write(offset: number, size: number, value: number): void { this.log.push(`w${offset}/${size}=${value.toString(16)}`); }
  readMmio(offset: number, size: number): bigint { this.log.push(`mr${offset}/${size}`); return 0x1122334455667788n & ((1n << BigInt(size * 8)) - 1n); }
  writeMmio(offset: number, size: number, value: bigint): void { this.log.push(`mw${offset}/${size}=${value.toString(16)}`); }
}

function setup() {
  const pio = new PioBus();
  const mmio = new MmioBus();
  const dev = new Recorder();
  pio.register(0x100, 8, dev);
  mmio.register(0xd0000000, 0x1000, dev);
  return { dev, d: new ExitDispatcher(pio, mmio) };
}

test('PIO string exits (rep outsw/insb) are split into count accesses from data_offset', () => {
  const { dev, d } = setup();
  const { bytes, view } = runPage();
  view.setUint32(RUN.EXIT_REASON, EXIT.IO, true);
  bytes[RUN.IO_DIRECTION] = 1; bytes[RUN.IO_SIZE] = 2;
  view.setUint16(RUN.IO_PORT, 0x102, true); view.setUint32(RUN.IO_COUNT, 3, true);
  view.setUint32(RUN.IO_DATA_OFFSET, 4096, true);
  view.setUint16(4096, 0xaaaa, true); view.setUint16(4098, 0xbbbb, true); view.setUint16(4100, 0xcccc, true);
  assert.equal(d.handle(view, bytes, 0), ACTION.CONTINUE);
  assert.deepEqual(dev.log, ['w2/2=aaaa', 'w2/2=bbbb', 'w2/2=cccc']);
  dev.log = [];
  bytes[RUN.IO_DIRECTION] = 0; bytes[RUN.IO_SIZE] = 1; view.setUint32(RUN.IO_COUNT, 2, true);
  d.handle(view, bytes, 0);
  assert.deepEqual([bytes[4096], bytes[4097]], [0x78, 0x78]);
  assert.equal(d.exitCounts[EXIT.IO], 2);
});

test('MMIO exits decode little-endian data both ways', () => {
  const { dev, d } = setup();
  const { bytes, view } = runPage();
  view.setUint32(RUN.EXIT_REASON, EXIT.MMIO, true);
  view.setUint32(RUN.MMIO_PHYS_ADDR, 0xd0000010, true);
  view.setUint32(RUN.MMIO_LEN, 4, true);
  bytes[RUN.MMIO_IS_WRITE] = 1;
  view.setUint32(RUN.MMIO_DATA, 0xcafef00d, true);
  d.handle(view, bytes, 0);
  bytes[RUN.MMIO_IS_WRITE] = 0;
  view.setUint32(RUN.MMIO_LEN, 8, true);
  d.handle(view, bytes, 0);
  assert.deepEqual(dev.log, ['mw16/4=cafef00d', 'mr16/8']);
  assert.equal(view.getBigUint64(RUN.MMIO_DATA, true), 0x1122334455667788n);
});

test('triple fault resets, system events power off or reset, internal errors stop with a reason', () => {
  const { d } = setup();
  const { bytes, view } = runPage();
  view.setUint32(RUN.EXIT_REASON, EXIT.SHUTDOWN, true);
  assert.equal(d.handle(view, bytes, 0), ACTION.RESET);
  view.setUint32(RUN.EXIT_REASON, EXIT.SYSTEM_EVENT, true);
  view.setUint32(RUN.SYSTEM_EVENT_TYPE, 1, true);
  assert.equal(d.handle(view, bytes, 0), ACTION.POWEROFF);
  view.setUint32(RUN.SYSTEM_EVENT_TYPE, 2, true);
  assert.equal(d.handle(view, bytes, 1), ACTION.RESET);
  view.setUint32(RUN.EXIT_REASON, EXIT.INTERNAL_ERROR, true);
  view.setUint32(RUN.INTERNAL_SUBERROR, 1, true);
  assert.equal(d.handle(view, bytes, 1), ACTION.ERROR);
  assert.match(d.errorMessage, /vCPU 1: KVM internal error, suberror 1/);
});

test('fuzz: random kvm_run pages never throw and never touch bytes outside the run area', () => {
  const rng = new Prng(42);
  for (let i = 0; i < 20000; i++) {
    const { d } = setup();
    const { bytes, view } = runPage();
    for (let j = 0; j < 64; j++) bytes[rng.below(64)] = rng.next() & 0xff;
    view.setUint32(RUN.EXIT_REASON, rng.pick([EXIT.IO, EXIT.MMIO, EXIT.IO, rng.below(40)]), true);
    if (rng.below(2)) view.setUint32(RUN.IO_DATA_OFFSET, rng.below(RUN_SIZE + 100), true);
    if (rng.below(2)) view.setUint16(RUN.IO_PORT, 0x100 + rng.below(10), true);
    if (rng.below(2)) view.setUint32(RUN.MMIO_PHYS_ADDR, 0xd0000000 + rng.below(0x1100), true);
    const action = d.handle(view, bytes, 0);
    assert.ok(([ACTION.CONTINUE, ACTION.RESET, ACTION.POWEROFF, ACTION.ERROR] as number[]).includes(action));
  }
});
