// Scroll-back and log buffers: bounded, ordered, with stream offsets; plus a fuzz
// against a plain reference model.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LogBuffer, ScrollbackBuffer } from '../../main/manager/buffers';

const bytes = (s: string) => new TextEncoder().encode(s);
const text = (u: Uint8Array) => new TextDecoder().decode(u);

test('scroll-back keeps the last bytes and where they start in the stream', () => {
  const b = new ScrollbackBuffer(8);
  assert.deepEqual(b.snapshot(), { offset: 0, data: new Uint8Array(0) });
  b.append(bytes('abc'));
  b.append(bytes('defg'));
  assert.deepEqual({ ...b.snapshot(), data: text(b.snapshot().data) }, { offset: 0, data: 'abcdefg' });
  b.append(bytes('hij'));
  assert.equal(text(b.snapshot().data), 'cdefghij');
  assert.equal(b.snapshot().offset, 2);
  b.append(bytes('0123456789'));
  assert.deepEqual({ ...b.snapshot(), data: text(b.snapshot().data) }, { offset: 12, data: '23456789' });
  assert.equal(b.end, 20);
  b.append(new Uint8Array(0));
  assert.equal(b.end, 20);
});

test('fuzz: scroll-back equals the tail of everything appended', () => {
  let seed = 5;
  const rand = () => { seed = (seed * 16807) % 2147483647; return seed / 2147483647; };
  for (const capacity of [1, 7, 64, 1000]) {
    const b = new ScrollbackBuffer(capacity);
    let all: number[] = [];
    for (let i = 0; i < 500; i++) {
      const chunk = Uint8Array.from({ length: Math.floor(rand() * capacity * 1.5) }, () => Math.floor(rand() * 256));
      b.append(chunk);
      all = all.concat([...chunk]);
      if (all.length > 4 * capacity) all = all.slice(all.length - 2 * capacity); // keep the model small
      const snap = b.snapshot();
      const expectedLength = Math.min(capacity, b.end);
      assert.equal(snap.data.length, expectedLength);
      assert.equal(snap.offset, b.end - expectedLength);
      assert.deepEqual([...snap.data], all.slice(all.length - expectedLength));
    }
  }
});

test('the log keeps the last lines, joins partial stderr lines and caps line length', () => {
  const log = new LogBuffer(3, 10);
  log.addLine('one');
  log.addText('tw');
  log.addText('o\r\nthr');
  assert.deepEqual(log.tail(), ['one', 'two']);
  log.addText('ee\nfour\n');
  assert.deepEqual(log.tail(), ['two', 'three', 'four']);
  log.addLine('a\nb');
  assert.deepEqual(log.tail(), ['four', 'a', 'b']);
  log.addText('unterminated');
  log.flushText();
  assert.deepEqual(log.tail(2), ['b', 'unterminat…']);
  log.addText('x'.repeat(25));
  assert.deepEqual(log.tail(1), ['xxxxxxxxxx…'], 'an endless line is cut, not buffered forever');
});
