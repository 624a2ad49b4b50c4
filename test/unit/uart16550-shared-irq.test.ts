import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IrqLines, irqLinesOf } from '../../main/vmm/platform/irq';
import { IER, MCR, Uart16550 } from '../../main/vmm/devices/uart16550';
import { FakeRing, REG } from '../helpers/uart';

test('a shared line is the OR of its pins and tells the irqchip only about changes', () => {
  const calls: [number, boolean][] = [];
  const lines = new IrqLines((gsi, level) => calls.push([gsi, level]));
  const com1 = lines.pin(4, 'COM1');
  const com3 = lines.pin(4, 'COM3');
  const com2 = lines.pin(3, 'COM2');
  com1.set(true);
  com3.set(true);
  com1.set(false);
  assert.deepEqual(calls, [[4, true]], 'COM3 still holds IRQ 4 high');
  com3.set(false);
  com3.set(false);
  com2.set(true);
  assert.deepEqual(calls, [[4, true], [4, false], [3, true]]);
  assert.deepEqual(lines.line(4).deviceNames, ['COM1', 'COM3']);
});

test('a pulse gives a fresh edge only while the pin is asserted', () => {
  const calls: [number, boolean][] = [];
  const lines = new IrqLines((gsi, level) => calls.push([gsi, level]));
  const pin = lines.pin(9, 'dev');
  pin.pulse();
  assert.deepEqual(calls, []);
  pin.set(true);
  pin.pulse();
  assert.deepEqual(calls, [[9, true], [9, false], [9, true]]);
  assert.equal(pin.level, true);
});

test('irqLinesOf gives every device builder of one machine the same lines', () => {
  const calls: [number, boolean][] = [];
  const ctx = { setIrq: (gsi: number, level: boolean) => { calls.push([gsi, level]); } };
  const a = irqLinesOf(ctx).pin(4, 'a');
  const b = irqLinesOf(ctx).pin(4, 'b');
  a.set(true);
  b.set(true);
  a.set(false);
  assert.deepEqual(calls, [[4, true]]);
  assert.notEqual(irqLinesOf({ setIrq: () => {} }), irqLinesOf(ctx));
  assert.throws(() => irqLinesOf(ctx).pin(-1, 'bad'), /not a valid GSI/);
});

test('COM1 and COM3 on IRQ 4: servicing one port does not drop the other port\'s interrupt', () => {
  const calls: [number, boolean][] = [];
  const lines = new IrqLines((gsi, level) => calls.push([gsi, level]));
  const a = new Uart16550({ port: 0, output: new FakeRing(), irq: lines.pin(4, 'COM1'), notifyHost: () => {} });
  const c = new Uart16550({ port: 2, output: new FakeRing(), irq: lines.pin(4, 'COM3'), notifyHost: () => {} });
  for (const u of [a, c]) {
    u.write(REG.MCR, 1, MCR.OUT2);
    u.write(REG.IER, 1, IER.RX_DATA);
  }
  a.receive(Uint8Array.of(1));
  c.receive(Uint8Array.of(3));
  assert.equal(lines.line(4).level, true);
  a.read(REG.DATA, 1);
  assert.equal(lines.line(4).level, true, 'COM3 still has data');
  c.read(REG.DATA, 1);
  assert.equal(lines.line(4).level, false);
  assert.deepEqual(calls, [[4, true], [4, false]]);
});
