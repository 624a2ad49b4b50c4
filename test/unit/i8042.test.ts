import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AUX_IRQ, CTR, I8042, KBD_IRQ, OUTPUT_PORT, STATUS } from '../../main/vmm/devices/i8042';
import { Prng } from '../helpers/prng';

class FakeHost {
  irqEdges: string[] = [];
  levels = new Map<number, boolean>();
  resets = 0;
  setIrq(gsi: number, level: boolean): void {
    if (this.levels.get(gsi) === level) throw new Error(`IRQ ${gsi} set to ${level} twice in a row`);
    this.levels.set(gsi, level);
    this.irqEdges.push(`${gsi}${level ? '+' : '-'}`);
  }
  requestReset(): void {
    this.resets++;
  }
}

function setup() {
  const host = new FakeHost();
  const kbc = new I8042(host);
  const status = () => kbc.commandPort.read(0, 1);
  const command = (v: number) => kbc.commandPort.write(0, 1, v);
  const writeData = (v: number) => kbc.dataPort.write(0, 1, v);
  const readData = () => kbc.dataPort.read(0, 1);
  /** Reads every byte the controller has for us, as a polling driver does. */
  const drain = () => {
    const out: number[] = [];
    for (let i = 0; i < 64 && status() & STATUS.OUTPUT_FULL; i++) out.push(readData());
    return out;
  };
  /** Sends a controller command (and its data byte) with interrupts off, like SeaBIOS. */
  const ctl = (cmd: number, param?: number) => {
    command(cmd);
    if (param !== undefined) writeData(param);
    return drain();
  };
  return { host, kbc, status, command, writeData, readData, drain, ctl };
}

test('power-on status: empty output buffer, not inhibited, no IRQs', () => {
  const { status, host } = setup();
  assert.equal(status() & STATUS.OUTPUT_FULL, 0);
  assert.equal(status() & STATUS.INPUT_FULL, 0);
  assert.ok(status() & STATUS.NOT_INHIBITED);
  assert.deepEqual(host.irqEdges, []);
});

test('self test answers 0x55 and sets the system flag; interface tests answer 0x00', () => {
  const { ctl, status } = setup();
  assert.deepEqual(ctl(0xaa), [0x55]);
  assert.ok(status() & STATUS.SYSTEM_FLAG);
  assert.ok(status() & STATUS.LAST_WAS_COMMAND);
  assert.deepEqual(ctl(0xab), [0x00]);
  assert.deepEqual(ctl(0xa9), [0x00]);
  assert.deepEqual(ctl(0xa4), [0xf1]);
});

test('command byte reads back what was written (bit 7 reads as 0) and two reads agree', () => {
  const { ctl, status } = setup();
  ctl(0x60, 0xff);
  assert.deepEqual(ctl(0x20), [0x7f]);
  ctl(0x60, CTR.KBD_DISABLE | CTR.AUX_DISABLE | CTR.TRANSLATE);
  assert.deepEqual(ctl(0x20), ctl(0x20));
  assert.deepEqual(ctl(0x20), [0x70]);
  assert.equal(status() & STATUS.SYSTEM_FLAG, 0, 'the system flag follows command-byte bit 2');
  assert.ok(status() & STATUS.LAST_WAS_COMMAND, 'the last write was a command');
  ctl(0x60, CTR.SYSTEM_FLAG);
  assert.equal(status() & STATUS.LAST_WAS_COMMAND, 0, 'the last write was data');
  assert.ok(status() & STATUS.SYSTEM_FLAG);
  assert.deepEqual(ctl(0x21), [0x00], 'other controller RAM bytes read as 0');
});

test('0xAD/0xAE and 0xA7/0xA8 flip the disable bits as Linux checks them', () => {
  const { ctl } = setup();
  ctl(0x60, 0);
  ctl(0xa7);
  assert.equal(ctl(0x20)[0] & CTR.AUX_DISABLE, CTR.AUX_DISABLE);
  ctl(0xa8);
  assert.equal(ctl(0x20)[0] & CTR.AUX_DISABLE, 0);
  ctl(0xad);
  assert.equal(ctl(0x20)[0] & CTR.KBD_DISABLE, CTR.KBD_DISABLE);
  ctl(0xae);
  assert.equal(ctl(0x20)[0] & CTR.KBD_DISABLE, 0);
});

test('keyboard reset answers ACK then BAT OK; identify gives AB 83, or AB 41 through translation', () => {
  const { ctl, writeData, drain } = setup();
  ctl(0x60, CTR.AUX_DISABLE);
  writeData(0xff);
  assert.deepEqual(drain(), [0xfa, 0xaa]);
  writeData(0xf2);
  assert.deepEqual(drain(), [0xfa, 0xab, 0x83]);
  ctl(0x60, CTR.AUX_DISABLE | CTR.TRANSLATE);
  writeData(0xf2);
  assert.deepEqual(drain(), [0xfa, 0xab, 0x41]);
});

test('SeaBIOS keyboard set-up sequence gets an ACK for every byte', () => {
  const { ctl, writeData, drain, kbc } = setup();
  for (const b of [0xf5, 0xf0, 0x02, 0xf4, 0xed, 0x07, 0xf3, 0x20, 0xf6, 0xf8]) {
    writeData(b);
    assert.deepEqual(drain(), [0xfa], `byte 0x${b.toString(16)}`);
  }
  assert.equal(kbc.keyboard.leds, 7);
  assert.equal(kbc.keyboard.scanning, true);
  // Get the scancode set: ACK then the set (2), translated to 0x41 when translation is on.
  writeData(0xf0);
  writeData(0x00);
  assert.deepEqual(drain(), [0xfa, 0xfa, 0x02], 'each byte sent is ACKed, then the set follows');
  ctl(0x60, CTR.TRANSLATE);
  writeData(0xf0);
  writeData(0x00);
  assert.deepEqual(drain(), [0xfa, 0xfa, 0x41]);
  writeData(0xf0);
  writeData(0x07);
  assert.deepEqual(drain(), [0xfa, 0xfe], 'an invalid scancode set is refused');
  writeData(0xee);
  assert.deepEqual(drain(), [0xee], 'echo');
  writeData(0x12);
  assert.deepEqual(drain(), [0xfe], 'unknown commands ask for a resend');
  writeData(0xfe);
  assert.deepEqual(drain(), [0xfe], 'resend repeats the last byte');
});

test('a command in place of an LED parameter is taken as a new command', () => {
  const { writeData, drain } = setup();
  writeData(0xed);
  assert.deepEqual(drain(), [0xfa]);
  writeData(0xf2);
  assert.deepEqual(drain(), [0xfa, 0xab, 0x83]);
});

test('writing to the keyboard re-enables its interface; keyboard bytes wait while it is disabled', () => {
  const { ctl, writeData, drain, status, command } = setup();
  ctl(0x60, CTR.KBD_DISABLE);
  writeData(0xf4);
  assert.deepEqual(drain(), [0xfa]);
  assert.equal(ctl(0x20)[0] & CTR.KBD_DISABLE, 0);
  writeData(0xff);
  command(0xad);
  // The ACK already sits in the output buffer; BAT OK waits for the interface.
  assert.deepEqual(drain(), [0xfa]);
  assert.equal(status() & STATUS.OUTPUT_FULL, 0);
  command(0xae);
  assert.deepEqual(drain(), [0xaa]);
});

test('aux loopback (0xD3) echoes with the aux bit and raises IRQ 12 when enabled', () => {
  const { ctl, command, writeData, readData, status, host } = setup();
  ctl(0x60, CTR.AUX_DISABLE);
  command(0xd3);
  writeData(0x5a);
  assert.equal(status() & (STATUS.OUTPUT_FULL | STATUS.AUX_DATA), STATUS.OUTPUT_FULL | STATUS.AUX_DATA);
  assert.equal(readData(), 0x5a);
  assert.deepEqual(host.irqEdges, [], 'no interrupt with the aux interrupt off');
  // Linux's IRQ delivery test: aux interrupt on, loop 0xA5, expect IRQ 12 with aux data.
  ctl(0x60, CTR.AUX_INT);
  command(0xd3);
  writeData(0xa5);
  assert.deepEqual(host.irqEdges, [`${AUX_IRQ}+`]);
  assert.ok(status() & STATUS.AUX_DATA);
  assert.equal(readData(), 0xa5);
  assert.deepEqual(host.irqEdges, [`${AUX_IRQ}+`, `${AUX_IRQ}-`]);
  assert.equal(status() & STATUS.AUX_DATA, 0);
});

test('Linux multiplexer probe (F0, 56, A4 looped back) sees an echo, so no active multiplexer', () => {
  const { ctl } = setup();
  assert.deepEqual(ctl(0xd3, 0xf0), [0xf0]);
  assert.deepEqual(ctl(0xd3, 0x56), [0x56]);
  assert.deepEqual(ctl(0xd3, 0xa4), [0xa4]);
});

test('0xD2 puts a byte in the output buffer as keyboard data (IRQ 1)', () => {
  const { ctl, command, writeData, readData, status, host } = setup();
  ctl(0x60, CTR.KBD_INT);
  command(0xd2);
  writeData(0x1c);
  assert.equal(status() & (STATUS.OUTPUT_FULL | STATUS.AUX_DATA), STATUS.OUTPUT_FULL);
  assert.deepEqual(host.irqEdges, [`${KBD_IRQ}+`]);
  assert.equal(readData(), 0x1c);
  assert.deepEqual(host.irqEdges, [`${KBD_IRQ}+`, `${KBD_IRQ}-`]);
});

test('consecutive keyboard bytes each give the edge-triggered PIC a new edge', () => {
  const { ctl, writeData, readData, host } = setup();
  ctl(0x60, CTR.KBD_INT);
  writeData(0xff);
  assert.equal(readData(), 0xfa);
  assert.equal(readData(), 0xaa);
  assert.deepEqual(host.irqEdges, ['1+', '1-', '1+', '1-']);
  assert.equal(readData(), 0xaa, 'an empty buffer reads its last byte again');
  assert.deepEqual(host.irqEdges, ['1+', '1-', '1+', '1-']);
});

test('bytes to the absent aux device come back as 0xFE with aux and timeout bits', () => {
  const { ctl, command, writeData, status, readData, kbc } = setup();
  ctl(0x60, 0);
  command(0xd4);
  writeData(0xf2);
  assert.equal(status() & (STATUS.OUTPUT_FULL | STATUS.AUX_DATA | STATUS.TIMEOUT), STATUS.OUTPUT_FULL | STATUS.AUX_DATA | STATUS.TIMEOUT);
  assert.equal(readData(), 0xfe);
  assert.equal(status() & (STATUS.TIMEOUT | STATUS.AUX_DATA), 0, 'the error bits go with the byte');
  assert.equal(kbc.counters.auxWrites.value, 1);
  assert.equal(kbc.keyboard.scanning, true, 'the keyboard never saw the byte');
});

test('output port: read shows reset high and A20; writing bit 0 low resets; A20 is recorded', () => {
  const { ctl, host, kbc } = setup();
  const port = ctl(0xd0)[0];
  assert.equal(port & (OUTPUT_PORT.RESET_HIGH | OUTPUT_PORT.A20), OUTPUT_PORT.RESET_HIGH | OUTPUT_PORT.A20);
  ctl(0xd1, OUTPUT_PORT.RESET_HIGH);
  assert.equal(kbc.a20, false);
  assert.equal(ctl(0xd0)[0] & OUTPUT_PORT.A20, 0);
  assert.equal(host.resets, 0);
  ctl(0xd1, OUTPUT_PORT.RESET_HIGH | OUTPUT_PORT.A20);
  assert.equal(kbc.a20, true);
  ctl(0xd1, OUTPUT_PORT.A20);
  assert.equal(host.resets, 1);
  ctl(0xdd);
  assert.equal(kbc.a20, false);
  ctl(0xdf);
  assert.equal(kbc.a20, true);
});

test('0xFE pulses reset; other even 0xF0-0xFF pulses reset too, odd ones do not', () => {
  const { command, host } = setup();
  command(0xfe);
  assert.equal(host.resets, 1);
  command(0xff);
  command(0xf1);
  assert.equal(host.resets, 1);
  command(0xf0);
  assert.equal(host.resets, 2);
});

test('a new command replaces one still waiting for its data byte', () => {
  const { command, writeData, drain, ctl } = setup();
  ctl(0x60, 0);
  command(0x60);
  command(0xd3);
  writeData(0x42);
  assert.deepEqual(drain(), [0x42]);
  assert.deepEqual(ctl(0x20), [0x00], 'the command byte was not written');
});

test('output read with the keyboard interrupt set shows which port has data (0xD0 bits 4/5)', () => {
  const { ctl, command, writeData, readData } = setup();
  ctl(0x60, 0);
  command(0xd3);
  writeData(0x11);
  command(0xd0);
  // The loopback byte is still in the buffer; the output port answer queues behind it.
  assert.equal(readData(), 0x11);
  assert.equal(readData() & OUTPUT_PORT.AUX_OUTPUT_FULL, OUTPUT_PORT.AUX_OUTPUT_FULL);
});

test('fuzz: random port accesses never throw, never flood queues, and IRQ lines follow the buffer', () => {
  const rng = new Prng(0x8042);
  const ports = [0, 1];
  const interesting = [0x20, 0x60, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xad, 0xae, 0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xfe, 0xff,
    0xf2, 0xf0, 0xed, 0xf4, 0xf5, 0x00, 0x02];
  for (let round = 0; round < 200; round++) {
    const { kbc, host } = setup();
    for (let i = 0; i < 500; i++) {
      const port = rng.pick(ports) === 0 ? kbc.dataPort : kbc.commandPort;
      const size = rng.pick([1, 1, 1, 2, 4]);
      const value = rng.below(4) === 0 ? rng.next() : rng.pick(interesting);
      if (rng.below(2)) port.write(rng.below(4), size, value);
      else {
        const v = port.read(rng.below(4), size);
        assert.ok(Number.isInteger(v) && v >= 0 && v <= 0xff, `read returned ${v}`);
      }
      const status = kbc.statusValue;
      const full = (status & STATUS.OUTPUT_FULL) !== 0;
      assert.ok(full || (status & (STATUS.AUX_DATA | STATUS.TIMEOUT)) === 0, 'error/aux bits only with data');
      assert.equal(status & STATUS.INPUT_FULL, 0);
      assert.ok(kbc.keyboard.queue.length <= 16);
      const ctr = kbc.commandByteValue;
      const levels = kbc.irqLevels;
      assert.equal(host.levels.get(KBD_IRQ) ?? false, levels.kbd);
      assert.equal(host.levels.get(AUX_IRQ) ?? false, levels.aux);
      if (levels.kbd) assert.ok(full && !(status & STATUS.AUX_DATA) && ctr & CTR.KBD_INT);
      if (levels.aux) assert.ok(full && status & STATUS.AUX_DATA && ctr & CTR.AUX_INT);
    }
  }
});
