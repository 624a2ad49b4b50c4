import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HOST_QUEUE_LIMIT, IER, IIR, LSR, MCR, MSR } from '../../main/vmm/devices/uart16550';
import { REG, uartBench } from '../helpers/uart';

const bytes = (s: string) => Uint8Array.from(Buffer.from(s, 'latin1'));

function readAll(b: ReturnType<typeof uartBench>): string {
  let out = '';
  while (b.rd(REG.LSR) & LSR.DR) out += String.fromCharCode(b.rd(REG.DATA));
  return out;
}

test('registers after reset: THR empty, no interrupt, modem inputs asserted, 9600 divisor', () => {
  const b = uartBench();
  assert.equal(b.rd(REG.LSR), LSR.THRE | LSR.TEMT);
  assert.equal(b.rd(REG.IIR), IIR.NONE);
  assert.equal(b.rd(REG.IER), 0);
  assert.equal(b.rd(REG.LCR), 0);
  assert.equal(b.rd(REG.MCR), 0);
  assert.equal(b.rd(REG.MSR), MSR.CTS | MSR.DSR | MSR.DCD);
  b.wr(REG.LCR, 0x80);
  assert.equal(b.rd(REG.DATA), 12);
  assert.equal(b.rd(REG.IER), 0);
  assert.equal(b.pin.level, false);
});

test('the scratch register keeps what is written', () => {
  const b = uartBench();
  for (const v of [0x00, 0x55, 0xaa, 0xff]) {
    b.wr(REG.SCR, v);
    assert.equal(b.rd(REG.SCR), v);
  }
});

test('IER keeps only its low four bits, MCR its low five', () => {
  const b = uartBench();
  b.wr(REG.IER, 0xff);
  assert.equal(b.rd(REG.IER), 0x0f);
  b.wr(REG.MCR, 0xff);
  assert.equal(b.rd(REG.MCR), 0x1f);
});

test('DLAB switches offsets 0 and 1 to the divisor latch without touching THR or IER', () => {
  const b = uartBench();
  b.wr(REG.IER, 0x05);
  b.wr(REG.LCR, 0x83);
  b.wr(REG.DATA, 0x34);
  b.wr(REG.IER, 0x12);
  assert.equal(b.rd(REG.DATA), 0x34);
  assert.equal(b.rd(REG.IER), 0x12);
  assert.deepEqual(b.ring.bytes, [], 'a divisor write is not transmitted');
  assert.deepEqual(b.notes, [], 'nothing is announced while DLAB is set');
  b.wr(REG.LCR, 0x03);
  assert.equal(b.rd(REG.IER), 0x05);
  assert.equal(b.uart.read(REG.DATA, 2) & 0xff, 0, 'RBR reads the last received byte (none yet)');
  b.wr(REG.LCR, 0x80);
  assert.equal(b.uart.read(REG.DATA, 2), 0x1234, 'a word access is split into two byte cycles');
});

test('line settings are announced when DLAB clears, once per change, with baud = 115200 / divisor', () => {
  const b = uartBench({ port: 2 });
  assert.equal(b.uart.lineSettings, null);
  b.init();
  assert.deepEqual(b.notes.filter((n) => n.type === 'serial-line'), [
    { type: 'serial-line', port: 2, settings: { baud: 115200, dataBits: 8, parity: 'none', stopBits: 1 } },
  ]);
  b.wr(REG.LCR, 0x03); // unchanged
  assert.equal(b.notes.filter((n) => n.type === 'serial-line').length, 1);
  const cases: [number, number, object][] = [
    [0x0180, 0x1a, { baud: 300, dataBits: 7, parity: 'even', stopBits: 1 }],
    [12, 0x0f, { baud: 9600, dataBits: 8, parity: 'odd', stopBits: 2 }],
    [3, 0x28, { baud: 38400, dataBits: 5, parity: 'mark', stopBits: 1 }],
    [2, 0x39, { baud: 57600, dataBits: 6, parity: 'space', stopBits: 1 }],
  ];
  for (const [divisor, lcr, settings] of cases) {
    b.notes.length = 0;
    b.wr(REG.LCR, 0x80 | lcr);
    b.wr(REG.DATA, divisor & 0xff);
    b.wr(REG.IER, divisor >> 8);
    b.wr(REG.LCR, lcr);
    assert.deepEqual(b.notes, [{ type: 'serial-line', port: 2, settings }]);
    assert.deepEqual(b.uart.lineSettings, settings);
  }
  b.notes.length = 0;
  b.wr(REG.LCR, 0x80);
  b.wr(REG.DATA, 0);
  b.wr(REG.IER, 0);
  b.wr(REG.LCR, 0x03);
  assert.deepEqual(b.notes, [], 'a zero divisor stops the baud generator: nothing to apply');
});

test('the receive FIFO returns bytes in order and DR follows its contents', () => {
  const b = uartBench();
  b.init();
  b.uart.receive(bytes('hello'));
  assert.equal(b.rd(REG.LSR) & LSR.DR, LSR.DR);
  assert.equal(readAll(b), 'hello');
  assert.equal(b.rd(REG.LSR) & LSR.DR, 0);
});

test('host bytes beyond the FIFO wait in the host queue and refill it as the guest reads', () => {
  const b = uartBench();
  b.init();
  const text = 'x'.repeat(40) + 'The quick brown fox jumps over the lazy dog'.repeat(50);
  b.uart.receive(bytes(text.slice(0, 1000)));
  b.uart.receive(bytes(text.slice(1000)));
  assert.equal(b.uart.pendingInput, text.length);
  assert.equal(readAll(b), text);
  assert.equal(b.rd(REG.LSR) & LSR.OE, 0, 'no overrun for host data that fits the queue');
});

test('FIFO overflow sets OE, keeps the first 16 bytes, and reading LSR clears OE', () => {
  const b = uartBench();
  b.init({ mcr: MCR.LOOP });
  for (let i = 0; i < 20; i++) b.wr(REG.DATA, 0x41 + i);
  const lsr = b.rd(REG.LSR);
  assert.equal(lsr & (LSR.OE | LSR.DR), LSR.OE | LSR.DR);
  assert.equal(b.rd(REG.LSR) & LSR.OE, 0);
  assert.equal(readAll(b), 'ABCDEFGHIJKLMNOP');
  assert.deepEqual(b.ring.bytes, [], 'loopback transmits nothing on the line');
});

test('in 16450 mode an unread byte is overwritten and OE is set', () => {
  const b = uartBench();
  b.init({ fcr: 0, mcr: MCR.LOOP });
  b.wr(REG.DATA, 0x31);
  b.wr(REG.DATA, 0x32);
  assert.equal(b.rd(REG.LSR) & (LSR.OE | LSR.DR), LSR.OE | LSR.DR);
  assert.equal(readAll(b), '2');
});

test('a host flood beyond the host queue is reported as an overrun', () => {
  const b = uartBench();
  b.init();
  // The FIFO holds 16 and the host queue HOST_QUEUE_LIMIT more.
  b.uart.receive(new Uint8Array(HOST_QUEUE_LIMIT));
  b.uart.receive(new Uint8Array(16));
  assert.equal(b.rd(REG.LSR) & LSR.OE, 0);
  b.uart.receive(new Uint8Array(100).fill(7));
  assert.equal(b.rd(REG.LSR) & LSR.OE, LSR.OE);
  assert.equal(b.uart.counters.rxDropped.value, 100);
  assert.equal(b.uart.pendingInput, HOST_QUEUE_LIMIT + 16);
});

test('RX interrupt: data below the trigger level reports a character timeout, at or above it data available', () => {
  for (const [fcr, trigger] of [[0x01, 1], [0x41, 4], [0x81, 8], [0xc1, 14]] as const) {
    const b = uartBench();
    b.init({ fcr, ier: IER.RX_DATA });
    if (trigger > 1) {
      b.uart.receive(new Uint8Array(trigger - 1));
      assert.equal(b.rd(REG.IIR), IIR.FIFOS_ON | IIR.RX_TIMEOUT, `trigger ${trigger}: below`);
      assert.equal(b.pin.level, true);
    }
    b.uart.receive(new Uint8Array(1));
    assert.equal(b.rd(REG.IIR), IIR.FIFOS_ON | IIR.RX_DATA, `trigger ${trigger}: reached`);
    readAll(b);
    assert.equal(b.rd(REG.IIR), IIR.FIFOS_ON | IIR.NONE);
    assert.equal(b.pin.level, false);
  }
});

test('RX interrupt without FIFOs is data available, never a timeout', () => {
  const b = uartBench();
  b.init({ fcr: 0, ier: IER.RX_DATA });
  b.uart.receive(bytes('ab'));
  assert.equal(b.rd(REG.IIR), IIR.RX_DATA);
  assert.equal(b.rd(REG.DATA), 0x61);
  assert.equal(b.rd(REG.IIR), IIR.RX_DATA, 'the next host byte arrived as soon as RBR was read');
  assert.equal(b.rd(REG.DATA), 0x62);
  assert.equal(b.rd(REG.IIR), IIR.NONE);
});

test('reading RBR with data left below the trigger pulses the IRQ so an edge-triggered PIC interrupts again', () => {
  const b = uartBench();
  b.init({ fcr: 0x81, ier: IER.RX_DATA });
  b.uart.receive(bytes('abc'));
  b.irqCalls.length = 0;
  assert.equal(b.rd(REG.DATA), 0x61);
  assert.deepEqual(b.irqCalls, [[4, false], [4, true]]);
  b.irqCalls.length = 0;
  b.rd(REG.DATA);
  b.rd(REG.DATA);
  assert.deepEqual(b.irqCalls, [[4, false], [4, true], [4, false]], 'the last read leaves nothing: the line just drops');
});

test('IIR priority: line status > received data > THR empty > modem status, each cleared by its own rule', () => {
  const b = uartBench();
  b.init({ mcr: MCR.OUT2 | MCR.LOOP });
  b.rd(REG.MSR); // entering loopback changed the inputs; start with no deltas
  for (let i = 0; i < 17; i++) b.wr(REG.DATA, 0x30); // overrun
  b.wr(REG.MCR, MCR.OUT2 | MCR.LOOP | MCR.RTS); // CTS changes: modem delta
  b.wr(REG.IER, 0x0f);
  assert.equal(b.rd(REG.IIR) & 0x0f, IIR.LINE_STATUS);
  assert.equal(b.rd(REG.IIR) & 0x0f, IIR.LINE_STATUS, 'reading IIR does not clear a line status interrupt');
  b.rd(REG.LSR);
  assert.equal(b.rd(REG.IIR) & 0x0f, IIR.RX_DATA);
  readAll(b);
  assert.equal(b.rd(REG.IIR) & 0x0f, IIR.THR_EMPTY, 'reported THRE is cleared by this read');
  assert.equal(b.rd(REG.IIR) & 0x0f, IIR.MODEM_STATUS);
  assert.equal(b.rd(REG.MSR) & 0x0f, MSR.DCTS);
  assert.equal(b.rd(REG.IIR) & 0x0f, IIR.NONE);
});

test('an IIR read does not clear THRE while a higher-priority source hides it', () => {
  const b = uartBench();
  b.init({ ier: IER.RX_DATA | IER.THR_EMPTY });
  b.uart.receive(bytes('z'));
  assert.equal(b.rd(REG.IIR) & 0x0f, IIR.RX_TIMEOUT);
  b.rd(REG.DATA);
  assert.equal(b.rd(REG.IIR) & 0x0f, IIR.THR_EMPTY);
  assert.equal(b.rd(REG.IIR) & 0x0f, IIR.NONE);
});

test('THRE interrupt: raised on enabling it with THR empty, cleared by IIR read, raised again by each transmitted byte', () => {
  const b = uartBench();
  b.init({ mcr: MCR.OUT2 | MCR.DTR | MCR.RTS });
  assert.equal(b.pin.level, false);
  b.wr(REG.IER, IER.THR_EMPTY);
  assert.equal(b.pin.level, true);
  assert.equal(b.rd(REG.IIR), IIR.FIFOS_ON | IIR.THR_EMPTY);
  assert.equal(b.pin.level, false);
  assert.equal(b.rd(REG.IIR), IIR.FIFOS_ON | IIR.NONE);
  b.wr(REG.DATA, 0x41);
  assert.equal(b.pin.level, true, 'THR became empty again');
  b.wr(REG.IER, 0);
  assert.equal(b.pin.level, false);
  b.wr(REG.IER, IER.THR_EMPTY);
  assert.equal(b.rd(REG.IIR) & 0x0f, IIR.THR_EMPTY, 're-enabling ETBEI raises it again (SeaBIOS and Linux probe this)');
  assert.deepEqual(b.ring.bytes, [0x41]);
});

test('a full output ring holds THRE/TEMT at 0 (backpressure) and nothing is lost', () => {
  const b = uartBench({ ringCapacity: 4 });
  b.init();
  const message = 'backpressure, not loss';
  const received: number[] = [];
  let i = 0;
  let waits = 0;
  while (i < message.length) {
    if (b.rd(REG.LSR) & LSR.THRE) {
      b.wr(REG.DATA, message.charCodeAt(i++));
    } else {
      waits++;
      assert.equal(b.rd(REG.LSR) & LSR.TEMT, 0);
      received.push(...b.ring.drain());
    }
  }
  received.push(...b.ring.drain());
  assert.equal(String.fromCharCode(...received), message);
  assert.ok(waits >= 4, 'the guest had to wait for the host');
  assert.equal(b.uart.counters.txDropped.value, 0);
});

test('a burst of 16 bytes after THRE fits the transmit FIFO even when the ring has little room', () => {
  const b = uartBench({ ringCapacity: 3 });
  b.init({ ier: IER.THR_EMPTY });
  assert.equal(b.rd(REG.IIR) & 0x0f, IIR.THR_EMPTY);
  for (let i = 0; i < 16; i++) b.wr(REG.DATA, 0x61 + i);
  assert.equal(b.rd(REG.LSR) & (LSR.THRE | LSR.TEMT), 0);
  assert.equal(b.pin.level, false, 'no THRE interrupt while bytes wait');
  assert.equal(b.retries.length, 1, 'a retry is scheduled');
  const out: number[] = [];
  for (let round = 0; round < 10 && out.length < 16; round++) {
    out.push(...b.ring.drain());
    b.runRetries();
  }
  assert.equal(String.fromCharCode(...out), 'abcdefghijklmnop');
  assert.equal(b.rd(REG.IIR) & 0x0f, IIR.THR_EMPTY, 'THRE returns with its interrupt once the ring drained');
});

test('the retry alone (no guest access) raises THRE for an interrupt-driven guest waiting on a full ring', () => {
  const b = uartBench({ ringCapacity: 2 });
  b.init({ ier: IER.THR_EMPTY });
  b.rd(REG.IIR);
  b.wr(REG.DATA, 1);
  b.wr(REG.DATA, 2);
  assert.equal(b.pin.level, false);
  b.ring.drain();
  b.runRetries();
  assert.equal(b.pin.level, true);
});

test('a byte written into a full transmit FIFO is lost and counted, never a crash', () => {
  const b = uartBench({ ringCapacity: 0 });
  b.init();
  for (let i = 0; i < 20; i++) b.wr(REG.DATA, i);
  assert.equal(b.uart.counters.txDropped.value, 4);
  b.ring.capacity = 100;
  b.runRetries();
  assert.deepEqual(b.ring.bytes, [...Array(16).keys()]);
});

test('FCR clears: RX clear empties the FIFO, TX clear drops waiting bytes, toggling FIFO mode clears both', () => {
  const b = uartBench({ ringCapacity: 0 });
  b.init({ mcr: MCR.LOOP });
  b.wr(REG.DATA, 0x41);
  b.wr(REG.DATA, 0x42);
  b.wr(REG.FCR, 0x03);
  assert.equal(b.rd(REG.LSR) & LSR.DR, 0);
  b.wr(REG.MCR, 0);
  b.wr(REG.DATA, 0x43);
  assert.equal(b.rd(REG.LSR) & LSR.THRE, 0);
  b.wr(REG.FCR, 0x05);
  assert.equal(b.rd(REG.LSR) & LSR.THRE, 0, 'the ring is still full');
  b.ring.capacity = 10;
  assert.equal(b.rd(REG.LSR) & LSR.THRE, LSR.THRE);
  assert.deepEqual(b.ring.bytes, [], 'the cleared byte never went out');
  b.wr(REG.MCR, MCR.LOOP);
  b.wr(REG.DATA, 0x44);
  b.wr(REG.FCR, 0x00);
  assert.equal(b.rd(REG.LSR) & LSR.DR, 0, 'leaving FIFO mode clears the FIFO');
  assert.equal(b.rd(REG.IIR) & IIR.FIFOS_ON, 0);
});

test('loopback: TX feeds RX, MCR outputs feed MSR inputs, the line and the IRQ are disconnected', () => {
  const b = uartBench();
  b.init({ ier: IER.RX_DATA, mcr: MCR.OUT2 });
  b.wr(REG.MCR, MCR.LOOP | MCR.OUT2 | MCR.RTS);
  assert.equal(b.rd(REG.MSR) & 0xf0, MSR.CTS | MSR.DCD, 'Linux autoconfig expects 0x90 for LOOP|RTS|OUT2');
  b.wr(REG.MCR, MCR.LOOP | MCR.DTR | MCR.OUT1);
  assert.equal(b.rd(REG.MSR), MSR.DSR | MSR.RI | MSR.DCTS | MSR.DDSR | MSR.DDCD);
  b.wr(REG.DATA, 0x5a);
  assert.equal(b.rd(REG.IIR) & 0x0f, IIR.RX_TIMEOUT, 'the interrupt is visible in IIR');
  assert.equal(b.pin.level, false, 'but OUT2 is forced inactive, so the PC IRQ line stays low');
  assert.equal(b.rd(REG.DATA), 0x5a);
  b.uart.receive(bytes('host'));
  assert.equal(b.rd(REG.LSR) & LSR.DR, 0, 'the external line is disconnected in loopback');
  b.wr(REG.MCR, MCR.OUT2);
  assert.equal(readAll(b), 'host', 'host bytes arrive after loopback ends');
  assert.deepEqual(b.ring.bytes, []);
});

test('loopback break: BI and DR with a zero byte, a line status interrupt, BI cleared by LSR read', () => {
  const b = uartBench();
  b.init({ ier: IER.LINE_STATUS | IER.RX_DATA, mcr: MCR.LOOP });
  b.wr(REG.LCR, 0x43);
  assert.equal(b.rd(REG.IIR) & 0x0f, IIR.LINE_STATUS);
  const lsr = b.rd(REG.LSR);
  assert.equal(lsr & (LSR.BI | LSR.DR | LSR.RX_FIFO_ERROR), LSR.BI | LSR.DR | LSR.RX_FIFO_ERROR);
  assert.equal(b.rd(REG.LSR) & (LSR.BI | LSR.RX_FIFO_ERROR), 0);
  assert.equal(b.rd(REG.DATA), 0);
});

test('MCR OUT2 gates the IRQ output as on PC serial cards', () => {
  const b = uartBench();
  b.init({ ier: IER.RX_DATA, mcr: MCR.DTR | MCR.RTS });
  b.uart.receive(bytes('q'));
  assert.equal(b.rd(REG.IIR) & 0x0f, IIR.RX_TIMEOUT);
  assert.equal(b.pin.level, false);
  b.wr(REG.MCR, MCR.DTR | MCR.RTS | MCR.OUT2);
  assert.equal(b.pin.level, true);
  assert.deepEqual(b.irqCalls.at(-1), [4, true]);
  b.wr(REG.MCR, MCR.DTR | MCR.RTS);
  assert.equal(b.pin.level, false);
});

test('modem status from a host device: delta bits, trailing-edge RI, interrupt, cleared by MSR read', () => {
  const b = uartBench();
  b.init({ ier: IER.MODEM_STATUS });
  b.rd(REG.MSR);
  b.uart.setModemStatus({ cts: false, dsr: true, ri: true, dcd: true });
  assert.equal(b.pin.level, true);
  assert.equal(b.rd(REG.IIR) & 0x0f, IIR.MODEM_STATUS);
  assert.equal(b.rd(REG.MSR), MSR.DSR | MSR.RI | MSR.DCD | MSR.DCTS, 'RI rising is not TERI');
  assert.equal(b.pin.level, false);
  b.uart.setModemStatus({ cts: false, dsr: true, ri: false, dcd: false });
  assert.equal(b.rd(REG.MSR), MSR.DSR | MSR.TERI | MSR.DDCD);
  assert.equal(b.rd(REG.MSR), MSR.DSR);
  b.uart.setModemStatus({ cts: false, dsr: true, ri: false, dcd: false });
  assert.equal(b.rd(REG.IIR) & 0x0f, IIR.NONE, 'no change, no delta');
});

test('DTR/RTS changes are announced to the host; loopback forces them inactive', () => {
  const b = uartBench({ port: 1 });
  b.wr(REG.MCR, MCR.OUT2);
  assert.deepEqual(b.notes, []);
  b.wr(REG.MCR, MCR.OUT2 | MCR.DTR);
  b.wr(REG.MCR, MCR.OUT2 | MCR.DTR | MCR.RTS);
  b.wr(REG.MCR, MCR.OUT2 | MCR.DTR | MCR.RTS | MCR.LOOP);
  b.wr(REG.MCR, 0);
  assert.deepEqual(b.notes, [
    { type: 'serial-modem', port: 1, modem: { dtr: true, rts: false } },
    { type: 'serial-modem', port: 1, modem: { dtr: true, rts: true } },
    { type: 'serial-modem', port: 1, modem: { dtr: false, rts: false } },
  ]);
});

test('SeaBIOS port detection: IER=2 reads back and IIR reports THRE at once', () => {
  const b = uartBench();
  b.wr(REG.IER, 0x02);
  assert.equal(b.rd(REG.IER), 0x02);
  assert.equal(b.rd(REG.IIR) & 0x3f, 0x02);
  b.wr(REG.IER, 0);
});

test('Linux 8250 autoconfig sees a 16550A: FIFO bits in IIR, IER read-back, loopback MSR 0x90', () => {
  const b = uartBench();
  b.wr(REG.IER, 0);
  assert.equal(b.rd(REG.IER) & 0x0f, 0);
  b.wr(REG.IER, 0x0f);
  assert.equal(b.rd(REG.IER) & 0x0f, 0x0f);
  b.wr(REG.IER, 0);
  b.wr(REG.MCR, MCR.LOOP | 0x0a);
  assert.equal(b.rd(REG.MSR) & 0xf0, 0x90);
  b.wr(REG.MCR, 0);
  b.wr(REG.FCR, 0x01);
  assert.equal(b.rd(REG.IIR) >> 6, 3, '16550A reports both FIFO bits');
  b.wr(REG.FCR, 0);
  assert.equal(b.rd(REG.IIR) >> 6, 0);
});

test('accesses past the eight registers of a wide access read as 0xff and are ignored on write', () => {
  const b = uartBench();
  b.wr(REG.SCR, 0x12);
  assert.equal(b.uart.read(7, 4), 0xffffff12);
  b.uart.write(7, 2, 0xabcd);
  assert.equal(b.rd(REG.SCR), 0xcd);
  assert.equal(b.uart.checkInvariants(), null);
});

test('describeState shows the pending source, the line and the queues without reading them away', () => {
  const b = uartBench();
  b.wr(REG.MCR, MCR.OUT2);
  b.wr(REG.IER, IER.RX_DATA);
  b.uart.receive(bytes('x'.repeat(20)));
  const state = b.uart.describeState();
  assert.match(state, /ier 0x1 .* pending 0x4 irq high rx fifo 1 host queue 19 /, state);
  assert.equal(b.rd(REG.IIR) & 0x0f, IIR.RX_DATA, 'the dump consumed nothing');
  assert.equal(readAll(b).length, 20);
});
