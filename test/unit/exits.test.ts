import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EXIT, RUN } from '../../native';
import { MmioBus, PioBus, type IoDevice } from '../../main/vmm/devices/bus';
import { StatsRegistry } from '../../main/vmm/shared/stats';
import { ACTION, ExitDispatcher } from '../../main/vmm/machine/exits';
import { Prng } from '../helpers/prng';

const RUN_SIZE = 3 * 4096;

function runPage() {
  const bytes = new Uint8Array(RUN_SIZE);
  return { bytes, view: new DataView(bytes.buffer) };
}

class Recorder implements IoDevice {
  log: string[] = [];
  constructor(readonly name: string, private readonly prefix: string) {}
  read(offset: number, size: number): number {
    this.log.push(`${this.prefix}r${offset}/${size}`);
    // Little-endian bytes 88 77 66 55 | 44 33 22 11 from offset 0 (a register file).
    const word = offset >= 4 ? 0x11223344 : 0x55667788;
    return size === 4 ? word : word & (2 ** (size * 8) - 1);
  }
  write(offset: number, size: number, value: number): void { this.log.push(`${this.prefix}w${offset}/${size}=${value.toString(16)}`); }
}

function setup() {
  const stats = new StatsRegistry();
  const pio = new PioBus(stats);
  const mmio = new MmioBus(stats);
  const dev = new Recorder('rec', '');
  const mem = new Recorder('mem', 'm');
  pio.register(0x100, 8, dev);
  mmio.register(0xd0000000, 0x1000, mem);
  return { dev, mem, stats, d: new ExitDispatcher(pio, mmio, stats) };
}

function count(registry: StatsRegistry, group: string, name: string): number {
  const slot = registry.schema.findIndex((s) => s.group === group && s.name === name);
  return slot < 0 ? 0 : registry.counts[slot];
}

test('PIO string exits (rep outsw/insb) are split into count accesses from data_offset', () => {
  const { dev, d, stats } = setup();
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
  assert.deepEqual([bytes[4096], bytes[4097]], [0x88, 0x88]);
  // Exits by reason and accesses by device, in the statistics registry.
  assert.equal(count(stats, 'exits', 'io'), 2);
  assert.equal(count(stats, 'rec', 'pio-writes'), 3);
  assert.equal(count(stats, 'rec', 'pio-reads'), 2);
});

test('MMIO exits decode little-endian data both ways, as numbers, and are counted', () => {
  const { mem, d, stats } = setup();
  const { bytes, view } = runPage();
  view.setUint32(RUN.EXIT_REASON, EXIT.MMIO, true);
  view.setUint32(RUN.MMIO_PHYS_ADDR, 0xd0000010, true);
  const exit = (write: boolean, len: number) => {
    bytes[RUN.MMIO_IS_WRITE] = write ? 1 : 0;
    view.setUint32(RUN.MMIO_LEN, len, true);
    assert.equal(d.handle(view, bytes, 0), ACTION.CONTINUE);
  };
  view.setUint32(RUN.MMIO_DATA, 0xcafef00d, true);
  view.setUint32(RUN.MMIO_DATA + 4, 0x8badf00d, true);
  exit(true, 4);
  exit(true, 2);
  exit(true, 1);
  // 8 bytes to a device without write64: low half at the offset, then the high half.
  exit(true, 8);
  // An odd length (3) goes byte by byte.
  exit(true, 3);
  assert.deepEqual(mem.log, ['mw16/4=cafef00d', 'mw16/2=f00d', 'mw16/1=d', 'mw16/4=cafef00d', 'mw20/4=8badf00d',
    'mw16/1=d', 'mw17/1=f0', 'mw18/1=fe']);
  mem.log = [];
  view.setUint32(RUN.MMIO_PHYS_ADDR, 0xd0000000, true);
  exit(false, 8);
  assert.equal(view.getUint32(RUN.MMIO_DATA, true), 0x55667788);
  assert.equal(view.getUint32(RUN.MMIO_DATA + 4, true), 0x11223344);
  exit(false, 4);
  assert.equal(view.getUint32(RUN.MMIO_DATA, true), 0x55667788);
  bytes.fill(0, RUN.MMIO_DATA, RUN.MMIO_DATA + 8);
  exit(false, 2);
  assert.deepEqual([...bytes.subarray(RUN.MMIO_DATA, RUN.MMIO_DATA + 3)], [0x88, 0x77, 0]);
  exit(false, 1);
  assert.deepEqual(mem.log, ['mr0/4', 'mr4/4', 'mr0/4', 'mr0/2', 'mr0/1']);
  // An address nothing decodes reads as all ones.
  view.setUint32(RUN.MMIO_PHYS_ADDR, 0xe0000000, true);
  exit(false, 8);
  assert.equal(view.getUint32(RUN.MMIO_DATA + 4, true), 0xffffffff);
  assert.equal(count(stats, 'exits', 'mmio'), 10);
  assert.equal(count(stats, 'mem', 'mmio-writes'), 5 + 2);
  assert.equal(count(stats, 'mem', 'mmio-reads'), 4);
  assert.equal(count(stats, 'unassigned', 'mmio-reads'), 1);
});

test('an exit reason with no name is counted as exit_<n> in the registry', () => {
  const { d, stats } = setup();
  const { bytes, view } = runPage();
  view.setUint32(RUN.EXIT_REASON, 33, true);
  assert.equal(d.handle(view, bytes, 0), ACTION.ERROR);
  assert.equal(count(stats, 'exits', 'exit_33'), 1);
});

test('triple fault resets, system events power off or reset, internal errors stop with a reason', () => {
  const { d } = setup();
  const { bytes, view } = runPage();
  view.setUint32(RUN.EXIT_REASON, EXIT.SHUTDOWN, true);
  assert.equal(d.handle(view, bytes, 0), ACTION.RESET);
  assert.equal(d.resetCause, 'a triple fault on vCPU 0', 'the log says why the guest reset');
  view.setUint32(RUN.EXIT_REASON, EXIT.SYSTEM_EVENT, true);
  view.setUint32(RUN.SYSTEM_EVENT_TYPE, 1, true);
  assert.equal(d.handle(view, bytes, 0), ACTION.POWEROFF);
  view.setUint32(RUN.SYSTEM_EVENT_TYPE, 2, true);
  assert.equal(d.handle(view, bytes, 1), ACTION.RESET);
  assert.equal(d.resetCause, 'KVM\'s reset system event on vCPU 1');
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
    if (rng.below(2)) view.setUint32(RUN.MMIO_LEN, rng.below(12), true);
    const action = d.handle(view, bytes, 0);
    assert.ok(([ACTION.CONTINUE, ACTION.RESET, ACTION.POWEROFF, ACTION.ERROR] as number[]).includes(action));
  }
});
