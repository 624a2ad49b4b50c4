import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Port92, PORT92_A20, PORT92_RESET } from '../../main/vmm/devices/port92';
import { Prng } from '../helpers/prng';

test('port 0x92 powers on with A20 enabled and reads back what was written', () => {
  let resets = 0;
  const p = new Port92(() => resets++);
  assert.equal(p.read(), PORT92_A20);
  assert.equal(p.a20, true);
  p.write(0, 1, 0x00);
  assert.equal(p.a20, false);
  assert.equal(p.read(), 0x00);
  p.write(0, 1, 0x0a);
  assert.equal(p.read(), 0x0a);
  assert.equal(resets, 0);
});

test('bit 0 resets on a 0 → 1 transition only', () => {
  let resets = 0;
  const p = new Port92(() => resets++);
  p.write(0, 1, PORT92_A20 | PORT92_RESET);
  assert.equal(resets, 1);
  p.write(0, 1, PORT92_A20 | PORT92_RESET);
  assert.equal(resets, 1, 'writing 1 while it is already 1 is not an edge');
  p.write(0, 1, PORT92_A20);
  assert.equal(resets, 1);
  p.write(0, 1, PORT92_RESET);
  assert.equal(resets, 2);
});

test('fuzz: random writes keep an 8-bit value and reset exactly on rising edges of bit 0', () => {
  const rng = new Prng(92);
  let resets = 0;
  const p = new Port92(() => resets++);
  let expected = 0;
  let bit0 = 0;
  for (let i = 0; i < 20000; i++) {
    if (rng.below(2)) {
      const v = rng.next();
      p.write(rng.below(4), rng.pick([1, 2, 4]), v);
      if (v & 1 && !bit0) expected++;
      bit0 = v & 1;
      assert.equal(p.read(), v & 0xff);
    } else {
      const v = p.read();
      assert.ok(v >= 0 && v <= 0xff);
    }
    assert.equal(resets, expected);
  }
});
