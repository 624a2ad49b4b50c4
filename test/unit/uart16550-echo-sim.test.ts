// The 16550 model against a driver shaped like Linux's 8250 (IIR loop, RX up to 256 bytes,
// TX up to 16 per THRE interrupt, THRI cleared when the buffer empties and set again to send)
// behind an edge-triggered interrupt input, echoing every byte it receives as a shell does.
// Host bytes, ring drains and retry timers come between any two register accesses, as they
// do on the machine thread. Every byte sent must arrive and every echo must leave: a lost
// interrupt shows as a console that stops mid-line.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IER, LSR } from '../../main/vmm/devices/uart16550';
import { Prng } from '../helpers/prng';
import { REG, uartBench } from '../helpers/uart';

function simulate(seed: number): { sent: number; received: number; echoed: number; stuck: string | null } {
  const rng = new Prng(seed);
  const b = uartBench({ ringCapacity: 1 + rng.below(64) });
  b.init({ ier: IER.RX_DATA });
  let ier = IER.RX_DATA;
  // The edge-triggered input: a rising edge latches a request, taken when not in service.
  let lastLevel = b.pin.level;
  let requested = false;
  const sample = () => {
    const level = b.pin.level;
    if (level && !lastLevel) requested = true;
    lastLevel = level;
  };
  const input = Array.from({ length: 300 + rng.below(300) }, (_, i) => 0x20 + (i % 90));
  let sentUpTo = 0;
  const received: number[] = [];
  const txBuffer: number[] = [];
  const out: number[] = [];
  // Between any two register accesses: host work on the machine thread.
  const hostStep = () => {
    if (sentUpTo < input.length && rng.below(4) === 0) {
      const n = 1 + rng.below(40);
      b.uart.receive(Uint8Array.from(input.slice(sentUpTo, sentUpTo + n)));
      sentUpTo = Math.min(input.length, sentUpTo + n);
    }
    if (rng.below(3) === 0) out.push(...b.ring.drain());
    if (rng.below(3) === 0) b.runRetries();
    sample();
  };
  const rd = (reg: number) => { hostStep(); const v = b.rd(reg); sample(); return v; };
  const wr = (reg: number, v: number) => { hostStep(); b.wr(reg, v); sample(); };
  const startTx = () => {
    if (!(ier & IER.THR_EMPTY)) {
      ier |= IER.THR_EMPTY;
      wr(REG.IER, ier);
    }
  };
  const txChars = () => {
    if (txBuffer.length === 0) {
      ier &= ~IER.THR_EMPTY;
      wr(REG.IER, ier);
      return;
    }
    for (let count = 16; count > 0 && txBuffer.length > 0; count--) wr(REG.DATA, txBuffer.shift()!);
    if (txBuffer.length === 0) {
      ier &= ~IER.THR_EMPTY;
      wr(REG.IER, ier);
    }
  };
  const isr = () => {
    for (let pass = 0; pass < 64; pass++) {
      const iir = rd(REG.IIR);
      if (iir & 1) return;
      let lsr = rd(REG.LSR);
      for (let n = 0; n < 256 && (lsr & LSR.DR); n++) {
        received.push(rd(REG.DATA));
        lsr = rd(REG.LSR);
      }
      rd(REG.MSR);
      if ((lsr & LSR.THRE) && (ier & IER.THR_EMPTY)) txChars();
    }
  };
  let echoed = 0;
  for (let step = 0; step < 200000; step++) {
    hostStep();
    if (requested) {
      requested = false;
      isr();
    } else if (echoed < received.length && rng.below(2) === 0) {
      // The tty layer echoes what arrived (process context, interrupts on).
      txBuffer.push(...received.slice(echoed));
      echoed = received.length;
      startTx();
    } else if (sentUpTo >= input.length && echoed === received.length && txBuffer.length === 0 && received.length === input.length) {
      out.push(...b.ring.drain());
      if (out.length === input.length) break;
    }
  }
  out.push(...b.ring.drain());
  let stuck: string | null = null;
  if (received.length !== input.length) stuck = `received ${received.length} of ${input.length} bytes`;
  else if (out.length !== input.length) stuck = `echoed ${out.length} of ${input.length} bytes (${txBuffer.length} in the driver's buffer, IER ${ier})`;
  return { sent: input.length, received: received.length, echoed: out.length, stuck };
}

test('a Linux-style 8250 driver behind an edge-triggered input receives and echoes every byte (random host timing)', () => {
  for (let seed = 1; seed <= 300; seed++) {
    const r = simulate(seed);
    if (r.stuck) assert.fail(`seed ${seed}: ${r.stuck}`);
  }
});
