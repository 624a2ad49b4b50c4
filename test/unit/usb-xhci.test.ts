import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DmaMemory } from '../../main/vmm/memory/dma';
import type { MemoryRegion } from '../../main/vmm/memory/guest-memory';
import type { UsbTransfer } from '../../main/vmm/devices/usb/usb-device';
import {
  DATA, DB, DCBAA, Driver, DEVICE_DESCRIPTOR, ERST, EVENT_RING, INPUT_CTX, IR0, LoopbackDevice, makeMemory, MFINDEX, OP, PORTSC,
  RingWriter, trb,
} from '../helpers/xhci-driver';

const CC = { SUCCESS: 1, TRANSACTION: 4, TRB: 5, STALL: 6, NO_SLOTS: 9, SLOT_NOT_ENABLED: 11, SHORT: 13, PARAMETER: 17, CONTEXT_STATE: 19, RING_FULL: 21, RING_STOPPED: 24, STOPPED_LI: 27 };
const T = { TRANSFER: 32, COMMAND: 33, PORT: 34, HOST: 37 };

function bytes(d: Driver, at: number, n: number): number[] {
  const b = new Uint8Array(n);
  d.dma.read(at, b);
  return [...b];
}

test('capability registers describe 32 slots, 4 interrupters, 8 ports and USB 3 / USB 2 protocols', () => {
  const d = new Driver();
  assert.equal(d.hc.read(0, 1), 0x40);
  assert.equal(d.hc.read(2, 2), 0x0100);
  assert.equal(d.r32(4), 32 | (4 << 8) | (8 << 24));
  const hcc1 = d.r32(0x10);
  assert.equal(hcc1 & 1, 1, 'AC64');
  assert.equal(hcc1 & 4, 0, '32-byte contexts');
  const dboff = d.r32(0x14);
  const rtsoff = d.r32(0x18);
  assert.equal(dboff, 0x3000);
  assert.equal(rtsoff, 0x1fe0);
  // Walk the extended capability list.
  let at = (hcc1 >>> 16) * 4;
  const protocols: [number, number, number][] = [];
  for (let n = 0; n < 8 && at !== 0; n++) {
    const dw0 = d.r32(at);
    if ((dw0 & 0xff) === 2) {
      assert.equal(d.r32(at + 4), 0x20425355);
      const dw2 = d.r32(at + 8);
      protocols.push([dw0 >>> 24, dw2 & 0xff, (dw2 >>> 8) & 0xff]);
    }
    const next = (dw0 >>> 8) & 0xff;
    at = next === 0 ? 0 : at + next * 4;
  }
  assert.deepEqual(protocols, [[3, 1, 4], [2, 5, 4]]);
  assert.equal(d.usbsts & 1, 1, 'halted after reset');
  assert.equal(d.r32(OP + 8), 1, 'PAGESIZE 4K');
  assert.equal(d.r32(PORTSC(1)) & 1, 0);
  assert.equal((d.r32(PORTSC(1)) >>> 9) & 1, 1, 'ports powered');
});

test('64-bit registers take two dword writes or one qword write', () => {
  const d = new Driver();
  d.w32(OP + 0x30, 0x12345000);
  d.w32(OP + 0x34, 0x1);
  assert.equal(d.hc.read(OP + 0x30, 8), 0x1_12345000);
  d.hc.write(OP + 0x30, 8, 0x2_00001040);
  assert.equal(d.r32(OP + 0x30), 0x1040 & ~0x3f);
  assert.equal(d.r32(OP + 0x34), 2);
  d.hc.write(OP + 0x30, 2, 0xffff); // word writes are ignored
  assert.equal(d.r32(OP + 0x30), 0x1040 & ~0x3f);
});

test('a driver brings up a USB 2 device: connect event, reset, slot, address, GET_DESCRIPTOR', () => {
  const d = new Driver();
  d.start();
  const dev = new LoopbackDevice('high');
  d.hc.attach(5, dev);
  let ev = d.events();
  assert.deepEqual(ev.map((e) => [e.type, e.param / 2 ** 24]), [[T.PORT, 5]]);
  let sc = d.r32(PORTSC(5));
  assert.equal(sc & 1, 1, 'CCS');
  assert.equal(sc & 2, 0, 'a USB 2 port is not enabled before reset');
  assert.equal((sc >>> 10) & 0xf, 3, 'high speed');
  assert.ok(sc & (1 << 17), 'CSC');
  assert.ok(d.usbsts & (1 << 4), 'PCD');
  d.w32(PORTSC(5), (sc & ~(1 << 1)) | (1 << 17)); // clear CSC, keep PED alone
  assert.equal(d.r32(PORTSC(5)) & (1 << 17), 0);
  d.w32(PORTSC(5), (1 << 4) | (1 << 9)); // PR
  sc = d.r32(PORTSC(5));
  assert.equal(sc & 2, 2, 'enabled after reset');
  assert.ok(sc & (1 << 21), 'PRC');
  assert.equal((sc >>> 5) & 0xf, 0, 'U0');
  assert.equal(dev.resets, 1);
  ev = d.events();
  assert.equal(ev.length, 1);
  assert.equal(ev[0].type, T.PORT);

  const slot = d.enableSlot();
  assert.equal(slot, 1);
  const addr = d.addressDevice(slot, 5, 3);
  assert.equal(addr.code, CC.SUCCESS);
  assert.equal(addr.slot, slot);
  assert.equal(dev.address, slot, 'SET_ADDRESS reached the device');
  assert.equal(d.slotState(slot), 2, 'Addressed');
  assert.equal(d.epState(slot, 1), 1, 'EP0 running');
  assert.equal(d.dma.readU32(0x8000 + 0x400 * slot + 12) & 0xff, slot, 'USB device address in the slot context');

  // GET_DESCRIPTOR(device, 18): Setup / Data IN / Status.
  const trbs = d.control(slot, [0x80, 6, 0x100, 0, 18], DATA, true);
  ev = d.events();
  assert.deepEqual(ev.map((e) => [e.type, e.code, e.slot, e.ep, e.param]), [[T.TRANSFER, CC.SUCCESS, slot, 1, trbs[2]]]);
  assert.deepEqual(bytes(d, DATA, 18), DEVICE_DESCRIPTOR);

  // Asking for 64 gets 18: Short Packet on the data stage (ISP), then Success on the status stage.
  const trbs2 = d.control(slot, [0x80, 6, 0x100, 0, 64], DATA + 0x100, true);
  ev = d.events();
  assert.deepEqual(ev.map((e) => [e.code, e.param, e.length]), [[CC.SHORT, trbs2[1], 64 - 18], [CC.SUCCESS, trbs2[2], 0]]);
  assert.deepEqual(bytes(d, DATA + 0x100, 18), DEVICE_DESCRIPTOR);

  // An unknown request stalls EP0: Stall Error, EP0 halted, then Reset Endpoint and Set TR Dequeue.
  const trbs3 = d.control(slot, [0x80, 0x33, 0, 0, 4], DATA, true);
  ev = d.events();
  assert.equal(ev.length, 1);
  assert.equal(ev[0].code, CC.STALL);
  assert.equal(ev[0].param, trbs3[1]);
  assert.equal(d.epState(slot, 1), 2, 'halted');
  assert.equal(d.epDequeue(slot, 1) & ~0xf, trbs3[0], 'the dequeue pointer stays on the stalled TD');
  assert.equal(d.command(0, 0, 0, trb(14, (slot << 24) | (1 << 16))).code, CC.SUCCESS);
  assert.equal(d.epState(slot, 1), 3, 'stopped');
  const r = d.ring(slot, 1);
  assert.equal(d.command(r.enqueue | r.cycle, 0, 0, trb(16, (slot << 24) | (1 << 16))).code, CC.SUCCESS);
  d.control(slot, [0, 9, 1, 0, 0], 0, false); // SET_CONFIGURATION 1
  ev = d.events();
  assert.deepEqual(ev.map((e) => e.code), [CC.SUCCESS]);
  assert.equal(dev.configured, 1);
  assert.equal(d.epState(slot, 1), 1, 'the doorbell restarted the stopped endpoint');
});

test('bulk OUT and IN: chains, immediate data, short packets, Event Data', () => {
  const d = new Driver();
  d.start();
  const dev = new LoopbackDevice('high');
  d.hc.attach(6, dev);
  const slot = d.enumerate(6, 3);
  const cfg = d.configure(slot, [[2, 2], [3, 6]]); // EP1 OUT (bulk), EP1 IN (bulk)
  assert.equal(cfg.code, CC.SUCCESS);
  assert.equal(d.slotState(slot), 3, 'Configured');
  assert.equal(d.epState(slot, 2), 1);
  assert.equal(d.epState(slot, 3), 1);
  assert.equal(d.dma.readU32(0x8000 + 0x400 * slot) >>> 27, 3, 'Context Entries');

  // OUT: a 3-TRB chain (one of them immediate data), IOC on the last.
  const out = d.ring(slot, 2);
  d.dma.write(DATA, new Uint8Array([1, 2, 3, 4, 5]));
  d.dma.write(DATA + 0x200, new Uint8Array([9, 8, 7]));
  out.push(DATA, 0, 5, trb(1, 1 << 4));
  out.push(0x0d0c0b0a, 0, 4, trb(1, (1 << 4) | (1 << 6)));
  const last = out.push(DATA + 0x200, 0, 3, trb(1, 1 << 5));
  d.w32(DB + 4 * slot, 2);
  let ev = d.events();
  assert.deepEqual(ev.map((e) => [e.type, e.code, e.ep, e.param, e.length]), [[T.TRANSFER, CC.SUCCESS, 2, last, 0]]);
  assert.deepEqual(dev.received, [[1, 2, 3, 4, 5, 0x0a, 0x0b, 0x0c, 0x0d, 9, 8, 7]]);

  // IN: 8 + 8 bytes asked for with ISP on both, an Event Data TRB at the end; 12 bytes come back.
  const inRing = d.ring(slot, 3);
  const a = inRing.push(DATA + 0x1000, 0, 8, trb(1, (1 << 4) | (1 << 2)));
  const b = inRing.push(DATA + 0x1100, 0, 8, trb(1, (1 << 4) | (1 << 2)));
  inRing.push(0xcafe0000, 0x1, 0, trb(7, 1 << 5));
  d.w32(DB + 4 * slot, 3);
  ev = d.events();
  assert.deepEqual(ev.map((e) => [e.code, e.param, e.length, e.ed]), [
    [CC.SHORT, b, 4, false],
    [CC.SHORT, 0x1_cafe0000, 12, true],
  ]);
  assert.notEqual(a, b);
  assert.deepEqual(bytes(d, DATA + 0x1000, 8), [1, 2, 3, 4, 5, 0x0a, 0x0b, 0x0c]);
  assert.deepEqual(bytes(d, DATA + 0x1100, 4), [0x0d, 9, 8, 7]);

  // An IN TD that waits for data is completed by a later OUT; several in flight stay ordered.
  const i1 = inRing.push(DATA + 0x2000, 0, 2, trb(1, 1 << 5));
  const i2 = inRing.push(DATA + 0x2100, 0, 2, trb(1, 1 << 5));
  d.w32(DB + 4 * slot, 3);
  assert.equal(d.events().length, 0);
  assert.equal(dev.pendingIn, 2);
  out.push(DATA, 0, 4, trb(1, 1 << 5));
  d.w32(DB + 4 * slot, 2);
  ev = d.events();
  assert.deepEqual(ev.map((e) => [e.ep, e.param]), [[2, out.enqueue - 16], [3, i1], [3, i2]]);
  assert.deepEqual(bytes(d, DATA + 0x2000, 2), [1, 2]);
  assert.deepEqual(bytes(d, DATA + 0x2100, 2), [3, 4]);
});

test('Stop Endpoint cancels a pending transfer; Set TR Dequeue moves past it', () => {
  const d = new Driver();
  d.start();
  const dev = new LoopbackDevice('high');
  d.hc.attach(5, dev);
  const slot = d.enumerate(5, 3);
  d.configure(slot, [[2, 2], [3, 6]]);
  const inRing = d.ring(slot, 3);
  const waiting = inRing.push(DATA, 0, 64, trb(1, (1 << 5) | (1 << 2)));
  d.w32(DB + 4 * slot, 3);
  assert.equal(dev.pendingIn, 1);
  const stop = d.command(0, 0, 0, trb(15, (slot << 24) | (3 << 16)));
  assert.equal(stop.code, CC.SUCCESS);
  assert.equal(dev.cancelled.length, 1, 'the device was asked to cancel');
  assert.equal(dev.pendingIn, 0);
  assert.equal(d.epState(slot, 3), 3, 'Stopped');
  assert.equal(d.epDequeue(slot, 3) & ~0xf, waiting, 'the dequeue pointer is the stopped TD');
  assert.equal(d.events().length, 0, 'nothing new after the command');
  // Stop again: Context State Error.
  assert.equal(d.command(0, 0, 0, trb(15, (slot << 24) | (3 << 16))).code, CC.CONTEXT_STATE);
  // Move past the cancelled TD and queue a new one that completes.
  const next = inRing.push(DATA + 0x100, 0, 4, trb(1, 1 << 5));
  assert.equal(d.command(next | inRing.cycle, 0, 0, trb(16, (slot << 24) | (3 << 16))).code, CC.SUCCESS);
  d.ring(slot, 2).push(0x44332211, 0, 4, trb(1, (1 << 5) | (1 << 6)));
  d.w32(DB + 4 * slot, 2);
  d.w32(DB + 4 * slot, 3);
  const ev = d.events();
  assert.deepEqual(ev.filter((e) => e.ep === 3).map((e) => [e.code, e.param]), [[CC.SUCCESS, next]]);
  assert.deepEqual(bytes(d, DATA + 0x100, 4), [0x11, 0x22, 0x33, 0x44]);
});

test('Stop Endpoint reports Stopped - Length Invalid before the command completes', () => {
  const d = new Driver();
  d.start();
  const dev = new LoopbackDevice('high');
  d.hc.attach(5, dev);
  const slot = d.enumerate(5, 3);
  d.configure(slot, [[3, 6]]);
  const waiting = d.ring(slot, 3).push(DATA, 0, 64, trb(1, 1 << 5));
  d.w32(DB + 4 * slot, 3);
  const at = d.cmd.push(0, 0, 0, trb(15, (slot << 24) | (3 << 16)));
  d.w32(DB, 0);
  const ev = d.events();
  assert.deepEqual(ev.map((e) => [e.type, e.code, e.param]), [[T.TRANSFER, CC.STOPPED_LI, waiting], [T.COMMAND, CC.SUCCESS, at]]);
});

test('a stalled bulk endpoint halts until Reset Endpoint; doorbells do nothing meanwhile', () => {
  const d = new Driver();
  d.start();
  const dev = new LoopbackDevice('high');
  d.hc.attach(5, dev);
  const slot = d.enumerate(5, 3);
  d.configure(slot, [[2, 2]]);
  dev.stallOut = true;
  const out = d.ring(slot, 2);
  const t1 = out.push(DATA, 0, 8, trb(1, 1 << 5));
  out.push(DATA, 0, 8, trb(1, 1 << 5));
  d.w32(DB + 4 * slot, 2);
  let ev = d.events();
  assert.deepEqual(ev.map((e) => [e.code, e.param, e.length]), [[CC.STALL, t1, 8]]);
  assert.equal(d.epState(slot, 2), 2);
  dev.stallOut = false;
  d.w32(DB + 4 * slot, 2);
  assert.equal(d.events().length, 0, 'a halted endpoint ignores its doorbell');
  assert.equal(d.command(0, 0, 0, trb(16, (slot << 24) | (2 << 16))).code, CC.CONTEXT_STATE, 'Set TR Dequeue on a halted endpoint');
  assert.equal(d.command(0, 0, 0, trb(14, (slot << 24) | (2 << 16))).code, CC.SUCCESS);
  assert.equal(d.command(0, 0, 0, trb(14, (slot << 24) | (2 << 16))).code, CC.CONTEXT_STATE, 'Reset Endpoint when not halted');
  d.w32(DB + 4 * slot, 2); // restart: the stalled TD runs again, then the next
  ev = d.events();
  assert.equal(ev.length, 2);
  assert.equal(dev.received.length, 2);
});

test('Link TRB loops are bounded: command ring → Host Controller Error, transfer ring → TRB Error', () => {
  const d = new Driver();
  d.start();
  // A command ring whose next TRB is a Link to itself.
  const at = d.cmd.enqueue;
  d.dma.writeU32(at, at);
  d.dma.writeU32(at + 4, 0);
  d.dma.writeU32(at + 12, trb(6, 1));
  d.w32(DB, 0);
  assert.ok(d.usbsts & (1 << 12), 'HCE');
  assert.ok(d.usbsts & 1, 'halted');

  const d2 = new Driver();
  d2.start();
  const dev = new LoopbackDevice('high');
  d2.hc.attach(5, dev);
  const slot = d2.enumerate(5, 3);
  d2.configure(slot, [[2, 2]]);
  const ring = d2.ring(slot, 2);
  // Two Links pointing at each other, with Toggle Cycle: the cycle never mismatches.
  const l1 = ring.enqueue;
  const l2 = l1 + 16;
  d2.dma.writeU32(l1, l2);
  d2.dma.writeU32(l1 + 12, trb(6, 1 | 2));
  d2.dma.writeU32(l2, l1);
  d2.dma.writeU32(l2 + 12, trb(6, 0 | 2));
  d2.w32(DB + 4 * slot, 2);
  const ev = d2.events();
  assert.equal(ev.length, 1);
  assert.equal(ev[0].code, CC.TRB);
  assert.equal(d2.epState(slot, 2), 2, 'halted');
  assert.equal(d2.usbsts & 1, 0, 'the controller still runs');
});

test('a ring of complete TDs that loops forever is served a bounded amount per call', () => {
  const d = new Driver();
  d.start(64);
  const dev = new LoopbackDevice('high');
  d.hc.attach(5, dev);
  const slot = d.enumerate(5, 3);
  d.configure(slot, [[2, 2]]);
  const ring = d.ring(slot, 2);
  // One OUT TD (no IOC, so no events) followed by a Link back to it without Toggle Cycle.
  const td = ring.enqueue;
  d.dma.writeU32(td, 0x11);
  d.dma.writeU32(td + 8, 1);
  d.dma.writeU32(td + 12, trb(1, 1 | (1 << 6)));
  d.dma.writeU32(td + 16, td);
  d.dma.writeU32(td + 28, trb(6, 1));
  d.w32(DB + 4 * slot, 2);
  assert.equal(dev.received.length, 256, 'one kick stops at MAX_TDS_PER_KICK');
  assert.equal(d.clock.pending, 1, 'and continues later from a timer');
  d.clock.advance(1);
  assert.equal(dev.received.length, 512);
  // The driver stops the endpoint; the loop ends.
  assert.equal(d.command(0, 0, 0, trb(15, (slot << 24) | (2 << 16))).code, CC.SUCCESS);
  d.clock.advance(1);
  assert.equal(dev.received.length, 512);
});

test('bad inputs get the spec completion codes', () => {
  const d = new Driver();
  d.start();
  const dev = new LoopbackDevice('high');
  d.hc.attach(5, dev);
  d.w32(PORTSC(5), 1 << 4);
  d.events();
  assert.equal(d.command(0, 0, 0, trb(10, 3 << 24)).code, CC.SLOT_NOT_ENABLED, 'Disable Slot of a disabled slot');
  assert.equal(d.command(0, 0, 0, trb(10, 200 << 24)).code, CC.TRB, 'slot ID out of range');
  assert.equal(d.command(0, 0, 0, trb(30)).code, CC.TRB, 'an unknown command');
  assert.equal(d.command(0, 0, 0, trb(23)).code, CC.SUCCESS, 'No-Op');
  const slot = d.enableSlot();
  assert.equal(d.configure(slot, [[2, 2]]).code, CC.CONTEXT_STATE, 'Configure Endpoint before Address Device');
  assert.equal(d.addressDevice(slot, 7, 3).code, CC.TRANSACTION, 'Address Device of an empty port');
  assert.equal(d.addressDevice(slot, 9, 3).code, CC.PARAMETER, 'a port that does not exist');
  assert.equal(d.addressDevice(slot, 5, 3, true).code, CC.SUCCESS, 'BSR=1');
  assert.equal(dev.address, 0, 'BSR=1 sends no SET_ADDRESS');
  assert.equal(d.slotState(slot), 1, 'Default');
  assert.equal(d.addressDevice(slot, 5, 3, true).code, CC.CONTEXT_STATE, 'BSR=1 in the Default state');
  assert.equal(d.addressDevice(slot, 5, 3).code, CC.SUCCESS);
  assert.equal(dev.address, slot);
  assert.equal(d.addressDevice(slot, 5, 3).code, CC.CONTEXT_STATE, 'Address Device when Addressed');
  assert.equal(d.configure(slot, [[2, 6]]).code, CC.PARAMETER, 'an IN type on an OUT DCI');
  assert.equal(d.configure(slot, [[3, 0]]).code, CC.PARAMETER, 'EP type 0');
  assert.equal(d.slotState(slot), 2, 'a rejected Configure Endpoint changed nothing');
  assert.equal(d.configure(slot, [[2, 2]]).code, CC.SUCCESS);
  assert.equal(d.command(0, 0, 0, trb(15, (slot << 24) | (5 << 16))).code, CC.CONTEXT_STATE, 'Stop of a disabled endpoint');
  assert.equal(d.command(0, 0, 0, trb(15, (slot << 24) | (0 << 16))).code, CC.TRB, 'DCI 0');
  d.command(0, 0, 0, trb(15, (slot << 24) | (2 << 16)));
  assert.equal(d.command(0x7ff00000, 0, 0, trb(16, (slot << 24) | (2 << 16))).code, CC.PARAMETER, 'Set TR Dequeue outside RAM');
  // Deconfigure, then Reset Device.
  assert.equal(d.command(0, 0, 0, trb(12, (slot << 24) | (1 << 9))).code, CC.SUCCESS);
  assert.equal(d.slotState(slot), 2);
  assert.equal(d.epState(slot, 2), 0);
  assert.equal(d.command(0, 0, 0, trb(17, slot << 24)).code, CC.SUCCESS);
  assert.equal(d.slotState(slot), 1, 'Default after Reset Device');
  assert.equal(d.command(0, 0, 0, trb(17, slot << 24)).code, CC.CONTEXT_STATE);
  // Slots run out at MaxSlotsEn (8).
  for (let i = 2; i <= 8; i++) d.enableSlot();
  assert.equal(d.command(0, 0, 0, trb(9)).code, CC.NO_SLOTS);
  assert.equal(d.command(0, 0, 0, trb(10, slot << 24)).code, CC.SUCCESS);
  assert.equal(d.enableSlot(), slot);
});

test('a transfer ring with a Data stage without Setup, or a Normal TRB on EP0, is a TRB Error', () => {
  const d = new Driver();
  d.start();
  d.hc.attach(5, new LoopbackDevice('high'));
  const slot = d.enumerate(5, 3);
  const r = d.ring(slot, 1);
  const bad = r.push(DATA, 0, 8, trb(3, 1 << 16));
  d.w32(DB + 4 * slot, 1);
  const ev = d.events();
  assert.deepEqual(ev.map((e) => [e.code, e.param]), [[CC.TRB, bad]]);
  assert.equal(d.epState(slot, 1), 2);
});

test('pointers outside guest RAM raise Host System Error and halt, never throw', () => {
  const d = new Driver();
  d.start();
  d.hc.attach(5, new LoopbackDevice('high'));
  d.w32(PORTSC(5), 1 << 4);
  d.events();
  const slot = d.enableSlot();
  d.cmd.push(0x7ff00000, 0, 0, trb(11, slot << 24)); // input context outside RAM
  d.w32(DB, 0);
  assert.ok(d.usbsts & (1 << 2), 'HSE');
  assert.ok(d.usbsts & 1, 'HCH');
  assert.ok(d.logs.some((l) => l.includes('input context')));
  d.w32(OP, 1);
  assert.ok(d.usbsts & 1, 'a controller with HSE does not run again before a reset');
  d.w32(OP, 2);
  assert.equal(d.usbsts & (1 << 2), 0, 'HCRST clears it');

  // A bad ERST (segment outside RAM, or too small) is refused when ERSTBA is written.
  const e = new Driver();
  e.start();
  e.dma.writeU64(ERST, 0x7ff00000);
  e.w64(IR0 + 0x10, ERST);
  assert.ok(e.usbsts & (1 << 2));
  const f = new Driver();
  f.start();
  f.dma.writeU32(ERST + 8, 4);
  f.w64(IR0 + 0x10, ERST);
  assert.ok(f.usbsts & (1 << 2));

  const u = new Driver();
  u.start();
  u.dma.writeU64(ERST, EVENT_RING + 0x10); // a segment base that is not 64-byte aligned
  u.w64(IR0 + 0x10, ERST);
  assert.ok(u.usbsts & (1 << 2));

  // A command ring pointing outside RAM.
  const g = new Driver();
  g.start();
  g.w32(OP, 0);
  g.w64(OP + 0x18, 0x7ff00000 | 1);
  g.w32(OP, 1);
  g.w32(DB, 0);
  assert.ok(g.usbsts & (1 << 2));

  // Bus mastering off: the DMA accessor refuses everything.
  let master = true;
  const memory = makeMemory();
  const h = new Driver(memory, new DmaMemory(memory, () => master));
  h.start();
  master = false;
  h.w32(DB, 0);
  h.hc.attach(1, new LoopbackDevice('super'));
  assert.ok(master || (h.usbsts & (1 << 2)), 'the Port Status Change event could not be written: HSE');
});

test('the event ring fills: Event Ring Full Error, then events resume when ERDP moves', () => {
  const d = new Driver();
  d.start(16);
  const addrs: number[] = [];
  for (let i = 0; i < 20; i++) addrs.push(d.cmd.push(0, 0, 0, trb(23)));
  d.w32(DB, 0);
  const ev = d.events();
  assert.equal(ev.length, 15, 'the ring holds 14 events and the full error (one slot stays empty)');
  assert.ok(ev.slice(0, 14).every((e) => e.type === T.COMMAND && e.code === CC.SUCCESS));
  assert.deepEqual([ev[14].type, ev[14].code], [T.HOST, CC.RING_FULL]);
  assert.ok((d.counters.get('events-dropped') ?? 0) >= 1);
  const more = d.cmd.push(0, 0, 0, trb(23));
  d.w32(DB, 0);
  const ev2 = d.events();
  assert.deepEqual(ev2.map((e) => e.param), [more]);
});

test('Command Abort on a running ring reports Command Ring Stopped', () => {
  const d = new Driver();
  d.start();
  d.w32(DB, 0);
  d.w32(OP + 0x18, 1 << 2);
  d.w32(OP + 0x1c, 0);
  // The ring was idle but running (CRR): the stop event points at the next command.
  const ev = d.events();
  assert.deepEqual(ev.map((e) => [e.type, e.code, e.param]), [[T.COMMAND, CC.RING_STOPPED, d.cmd.enqueue]]);
  assert.equal(d.r32(OP + 0x18) & 8, 0, 'CRR clear');
});

test('USB 3 ports: a SuperSpeed device is enabled at connect; warm reset sets WRC; speed classes are enforced', () => {
  const d = new Driver();
  d.start();
  assert.throws(() => d.hc.attach(1, new LoopbackDevice('high')), /USB 3 port/);
  assert.throws(() => d.hc.attach(5, new LoopbackDevice('super')), /USB 2 port/);
  const dev = new LoopbackDevice('super');
  assert.equal(d.hc.attachAnywhere(dev), 1);
  assert.throws(() => d.hc.attach(1, new LoopbackDevice('super')), /already/);
  let sc = d.r32(PORTSC(1));
  assert.equal(sc & 3, 3, 'CCS and PED');
  assert.equal((sc >>> 10) & 0xf, 4, 'SuperSpeed');
  d.w32(PORTSC(1), 1 << 31); // WPR
  sc = d.r32(PORTSC(1));
  assert.ok(sc & (1 << 19) && sc & (1 << 21), 'WRC and PRC');
  assert.equal(dev.resets, 1);
  const ports = d.hc.portList();
  assert.equal(ports.length, 8);
  assert.deepEqual(ports[0].device, { name: 'loopback', speed: 'super', vendorId: 0x1234, productId: 0x5678 });
  assert.equal(ports[0].protocol, 'usb3');
  assert.equal(ports[4].protocol, 'usb2');
  assert.equal(ports[4].device, null);
});

test('suspend and resume through PLS, and remote wake-up', () => {
  const d = new Driver();
  d.start();
  const dev = new LoopbackDevice('high');
  d.hc.attach(5, dev);
  d.w32(PORTSC(5), 1 << 4);
  d.events();
  const pls = (): number => (d.r32(PORTSC(5)) >>> 5) & 0xf;
  d.w32(PORTSC(5), (1 << 16) | (3 << 5)); // LWS, U3
  assert.equal(pls(), 3);
  assert.equal(d.events().length, 0, 'software suspend sets no PLC');
  d.w32(PORTSC(5), (1 << 16) | (15 << 5)); // Resume
  assert.equal(pls(), 15);
  d.w32(PORTSC(5), (1 << 16) | (0 << 5)); // U0
  assert.equal(pls(), 0);
  assert.ok(d.r32(PORTSC(5)) & (1 << 22), 'PLC');
  assert.equal(d.events().length, 1);
  d.w32(PORTSC(5), 1 << 22);
  d.w32(PORTSC(5), (1 << 16) | (3 << 5));
  dev.host!.wakeup();
  assert.equal(pls(), 15, 'a USB 2 device resumes through Resume');
  assert.equal(d.events().length, 1);
  // PLS writes without LWS are ignored.
  d.w32(PORTSC(5), 3 << 5);
  assert.equal(pls(), 15);
});

test('detach: disconnect event, transfers dropped without events, the slot keeps its state', () => {
  const d = new Driver();
  d.start();
  const dev = new LoopbackDevice('high');
  d.hc.attach(5, dev);
  const slot = d.enumerate(5, 3);
  d.w32(PORTSC(5), (1 << 17) | (1 << 21)); // the driver clears CSC and PRC
  d.configure(slot, [[3, 6]]);
  d.ring(slot, 3).push(DATA, 0, 8, trb(1, 1 << 5));
  d.w32(DB + 4 * slot, 3);
  assert.equal(dev.pendingIn, 1);
  assert.equal(d.hc.detach(5), dev);
  assert.equal(dev.cancelled.length, 1);
  assert.ok(dev.detached);
  const ev = d.events();
  assert.deepEqual(ev.map((e) => e.type), [T.PORT]);
  assert.equal(d.r32(PORTSC(5)) & 3, 0);
  assert.equal(d.hc.detach(5), null);
  assert.equal(d.command(0, 0, 0, trb(10, slot << 24)).code, CC.SUCCESS);
});

test('interrupts: IE and INTE gate the line, EHB holds further interrupts, MSI clears IP, IMOD defers', () => {
  const d = new Driver();
  d.start();
  d.hc.attach(1, new LoopbackDevice('super'));
  assert.deepEqual(d.raised, [0]);
  assert.equal(d.r32(IR0) & 1, 1, 'IP');
  assert.ok(d.usbsts & (1 << 3), 'EINT');
  assert.ok(d.r32(IR0 + 0x18) & 8, 'EHB');
  d.w32(IR0, 3); // clear IP, keep IE
  assert.deepEqual(d.lowered, [0]);
  d.w32(PORTSC(1), 1 << 4);
  assert.deepEqual(d.raised, [0], 'EHB still set: no new interrupt');
  d.w64(IR0 + 0x18, (EVENT_RING + 16) | 8); // software handled only the first event
  assert.deepEqual(d.raised, [0, 0], 'clearing EHB with events unread signals again');
  d.w32(IR0, 3);
  assert.equal(d.events().length, 2);
  assert.deepEqual(d.raised, [0, 0], 'all read: nothing more');

  // MSI: IP clears itself.
  d.msi = true;
  d.w32(PORTSC(1), (1 << 16) | (3 << 5));
  d.hc.ports[0].remoteWake();
  assert.equal(d.raised.length, 3);
  assert.equal(d.r32(IR0) & 1, 0);
  d.events();

  // IMOD 1 ms (4000 × 250 ns): the next interrupt waits for the clock.
  d.w32(IR0 + 4, 4000);
  d.clock.advance(10);
  const before = d.raised.length;
  d.cmd.push(0, 0, 0, trb(23));
  d.w32(DB, 0);
  assert.equal(d.raised.length, before + 1, 'the first interrupt after a quiet period fires at once');
  d.events();
  d.cmd.push(0, 0, 0, trb(23));
  d.w32(DB, 0);
  assert.equal(d.raised.length, before + 1, 'the next waits for the moderation interval');
  d.clock.advance(1);
  assert.equal(d.raised.length, before + 2);
  d.events();

  // INTE off: no line.
  d.w32(OP, 1);
  d.events();
  d.cmd.push(0, 0, 0, trb(23));
  d.w32(DB, 0);
  d.clock.advance(5);
  assert.equal(d.raised.length, before + 2);
});

test('the interrupters keep their registers in the page the guest reads without an exit: IP, EHB, ERDP and ERSTBA as a read returns them', () => {
  const d = new Driver();
  const page = d.interrupterPage;
  const asRead = () => Array.from({ length: 32 }, (_, w) => d.r32(IR0 + 4 * w));
  assert.equal(page[1], 4000, 'IMOD after reset');
  d.start();
  d.hc.attach(1, new LoopbackDevice('super'));
  assert.equal(page[0] & 3, 3, 'IMAN: IP and IE');
  assert.equal(page[6] & 8, 8, 'ERDP.EHB');
  assert.equal(page[4], ERST, 'ERSTBA');
  assert.deepEqual([...page.subarray(0, 32)], asRead());
  d.w32(IR0, 3); // clear IP, keep IE
  d.events();
  assert.equal(page[0] & 3, 2, 'IP cleared by the write, IE kept');
  assert.equal(page[6] & 8, 0, 'EHB cleared by the write');
  assert.equal(page[6] & ~0xf, d.eventDeq, 'ERDP where the driver left it');
  assert.deepEqual([...page.subarray(0, 32)], asRead());
  d.w32(OP, 2); // HCRST
  assert.deepEqual([...page.subarray(0, 32)], asRead());
  assert.equal(page[4], 0, 'ERSTBA after reset');
  assert.ok(page.subarray(32).every((w) => w === 0), 'nothing else on the page');
});

test('the capability, operational and port registers live in the page the guest reads without an exit: current before each interrupt and event, and after a reset', () => {
  const EINT = 1 << 3;
  const CCS_CSC = 1 | (1 << 17);
  const seen: { usbsts: number; portsc: number }[] = [];
  const d: Driver = new Driver(undefined, undefined, undefined, {
    interrupts: { raise: () => { seen.push({ usbsts: d.registerPage[(OP + 4) >>> 2], portsc: d.registerPage[PORTSC(2) >>> 2] }); return true; } },
  });
  const page = d.registerPage;
  const checkPage = (when: string) => {
    for (let w = 0; w < page.length; w++) {
      const read = d.r32(4 * w);
      if (page[w] !== read) assert.fail(`${when}: word 0x${(4 * w).toString(16)} is 0x${page[w].toString(16)} in the page, 0x${read.toString(16)} read`);
    }
    for (const port of d.hc.ports) assert.equal(page[PORTSC(port.number) >>> 2], port.read(), `${when}: PORTSC ${port.number}`);
  };
  assert.equal(page[0], 0x01000040, 'CAPLENGTH and HCIVERSION');
  assert.equal(page[(OP + 4) >>> 2], 1, 'USBSTS: halted');
  assert.equal(page[(OP + 8) >>> 2], 1, 'PAGESIZE');
  checkPage('after reset');
  d.start();
  d.hc.attach(2, new LoopbackDevice('super'));
  assert.equal(seen.length, 1);
  assert.equal(seen[0].usbsts & EINT, EINT, 'EINT was in the page when the interrupt went out');
  assert.equal(seen[0].portsc & CCS_CSC, CCS_CSC, 'so were the connection and its change bit');
  checkPage('after a connect');
  d.cmd.push(0, 0, 0, trb(23));
  d.w32(DB, 0);
  d.events();
  assert.equal(page[(OP + 0x18) >>> 2], 8, 'CRCR: Command Ring Running, the pointer reads as 0');
  checkPage('after a command');
  d.w32(PORTSC(2), (1 << 17) | (1 << 9)); // clear CSC
  d.w32(PORTSC(2) + 4, 0x12345678); // PORTPMSC
  assert.equal(page[(PORTSC(2) >>> 2) + 1], 0x12345678);
  checkPage('after port writes');
  d.hc.detach(2);
  checkPage('after a disconnect');
  d.w32(OP, 0); // halt
  checkPage('halted');
  d.w32(OP, 2); // HCRST
  checkPage('after HCRST');
  assert.equal(page[(PORTSC(2) >>> 2) + 1], 0, 'PORTPMSC after reset');
});

test('a USBSTS write-1-to-clear that KVM queued is applied before the controller sets a status bit, so it cannot clear the newer one', () => {
  const EINT = 1 << 3;
  const queued: number[] = [];
  let settles = 0;
  const applyQueued = () => { for (const v of queued.splice(0)) d.hc.write(OP + 4, 4, v); };
  const d: Driver = new Driver(undefined, undefined, undefined, { settleQueuedWrites: () => { settles++; applyQueued(); } });
  d.msi = true;
  d.start();
  d.hc.attach(1, new LoopbackDevice('super'));
  assert.ok(d.usbsts & EINT, 'EINT with the connect event');
  // The guest's interrupt handler clears EINT; KVM queues that write instead of exiting.
  queued.push(EINT);
  d.events();
  // A device event comes with no exit in between (a completion on a kick): a new interrupt.
  const before = settles;
  d.hc.attach(2, new LoopbackDevice('super'));
  assert.ok(settles > before, 'the controller applied the queue before setting EINT');
  applyQueued(); // the next exit: nothing left to apply
  assert.ok(d.usbsts & EINT, 'EINT of the newer interrupt is still set');
  assert.equal(d.raised.length, 2);
});

test('a queued write of ERDP\'s high dword is applied before the controller posts an event: with a segment above 4 GiB the ring still fills where the guest left it', () => {
  const HIGH = 0x1_0000_0000;
  const high: MemoryRegion = { guestBase: HIGH, size: 0x1000, buffer: new SharedArrayBuffer(0x1000), offset: 0, readonly: false, name: 'high' };
  const queued: number[] = [];
  const d: Driver = new Driver(makeMemory([high]), undefined, undefined, {
    settleQueuedWrites: () => { for (const v of queued.splice(0)) d.hc.write(IR0 + 0x1c, 4, v); },
  });
  d.start();
  // Two segments of 16 TRBs: one below 4 GiB, one above, so ERDP's high dword changes between them.
  d.dma.writeU64(ERST, EVENT_RING);
  d.dma.writeU32(ERST + 8, 16);
  d.dma.writeU64(ERST + 16, HIGH);
  d.dma.writeU32(ERST + 24, 16);
  d.dma.fill(EVENT_RING, 16 * 16, 0);
  d.w32(IR0 + 8, 2); // ERSTSZ
  d.w64(IR0 + 0x18, EVENT_RING);
  d.w64(IR0 + 0x10, ERST); // ERSTBA: the ring starts over
  const noOps = (n: number) => {
    for (let i = 0; i < n; i++) d.cmd.push(0, 0, 0, trb(23));
    d.w32(DB, 0);
  };
  /** Reads the new events across both segments, as a driver walks them. */
  let deq = EVENT_RING;
  let cycle = 1;
  const read = (): { type: number; code: number }[] => {
    const out: { type: number; code: number }[] = [];
    for (;;) {
      const control = d.dma.readU32(deq + 12);
      if ((control & 1) !== cycle) return out;
      out.push({ type: (control >>> 10) & 0x3f, code: d.dma.readU32(deq + 8) >>> 24 });
      deq += 16;
      if (deq === EVENT_RING + 256) deq = HIGH;
      else if (deq === HIGH + 256) {
        deq = EVENT_RING;
        cycle ^= 1;
      }
    }
  };
  noOps(20);
  assert.equal(read().length, 20);
  assert.equal(deq, HIGH + 4 * 16, 'the guest is 4 TRBs into the segment above 4 GiB');
  // ERDP low (pointer and EHB) exits; KVM queues the high dword.
  d.hc.write(IR0 + 0x18, 4, ((deq % HIGH) | 8) >>> 0);
  queued.push(1);
  // 32 commands complete with no exit in between: 31 slots of 32 take events, the last of them
  // Event Ring Full Error (xHCI 4.9.4), and nothing overwrites what the guest has not read.
  noOps(32);
  const events = read();
  assert.equal(queued.length, 0, 'the queue was applied');
  assert.deepEqual(events.map((e) => e.type).slice(0, 30), Array(30).fill(33), '30 command completions');
  assert.deepEqual(events.slice(30), [{ type: 37, code: 21 }], 'then Event Ring Full Error, and nothing after it');
});

test('MFINDEX counts microframes from the clock while running and holds when halted', () => {
  const d = new Driver();
  d.start();
  d.clock.advance(1);
  assert.equal(d.r32(MFINDEX), 8);
  d.clock.advance(2048);
  assert.equal(d.r32(MFINDEX), (8 * 2049) & 0x3fff);
  d.w32(OP, 0);
  const held = d.r32(MFINDEX);
  d.clock.advance(5);
  assert.equal(d.r32(MFINDEX), held);
});

test('with EWE set, an MFINDEX Wrap Event comes at each wrap, none without EWE or while halted', () => {
  const d = new Driver();
  d.start();
  d.clock.advance(3000);
  assert.deepEqual(d.events().filter((e) => e.type === 39), [], 'EWE clear: no wrap events');
  d.w32(OP, 1 | 4 | (1 << 10)); // RS | INTE | EWE
  d.clock.advance(1000); // MFINDEX passes 0x3fff at 4096 ms
  assert.equal(d.events().length, 0, 'not before the wrap');
  d.clock.advance(100);
  let wraps = d.events().filter((e) => e.type === 39);
  assert.equal(wraps.length, 1, 'one wrap event');
  assert.equal(wraps[0].code, 1, 'Success');
  assert.equal(d.r32(MFINDEX), 4100 * 8 - 0x8000, 'MFINDEX counts on from 0 after its second wrap');
  d.clock.advance(2048);
  d.clock.advance(2048);
  wraps = d.events().filter((e) => e.type === 39);
  assert.equal(wraps.length, 2, 'one per wrap period');
  d.w32(OP, 4 | (1 << 10)); // halted, EWE kept
  d.clock.advance(5000);
  assert.equal(d.events().filter((e) => e.type === 39).length, 0, 'none while halted');
  d.w32(OP, 1 | 4); // running again, EWE clear
  d.clock.advance(5000);
  assert.equal(d.events().filter((e) => e.type === 39).length, 0, 'none after EWE is cleared');
  assert.equal(d.clock.pending, 0, 'no timer left behind');
});

test('HCRST while transfers are pending cancels them and shows the connected ports again', () => {
  const d = new Driver();
  d.start();
  const dev = new LoopbackDevice('high');
  d.hc.attach(5, dev);
  const slot = d.enumerate(5, 3);
  d.configure(slot, [[3, 6]]);
  d.ring(slot, 3).push(DATA, 0, 8, trb(1, 1 << 5));
  d.w32(DB + 4 * slot, 3);
  d.w32(OP, 2);
  assert.equal(dev.pendingIn, 0);
  assert.ok(d.r32(PORTSC(5)) & (1 << 17), 'CSC after reset');
  assert.equal(d.r32(OP + 4) & 1, 1);
  void DCBAA; void INPUT_CTX; void RingWriter;
});

test('the buffers of TDs in flight are bounded controller-wide; a waiting TD goes when others finish', () => {
  const d = new Driver();
  d.start();
  const dev = new LoopbackDevice('high');
  d.hc.attach(5, dev);
  const slot = d.enumerate(5, 3);
  d.rings.set(`${slot}/3`, new RingWriter(d.dma, 0x50000, 2048));
  d.configure(slot, [[2, 2], [3, 6]]);
  const ring = d.ring(slot, 3);
  for (let td = 0; td < 5; td++) {
    for (let i = 0; i < 256; i++) ring.push(DATA, 0, 0x10000, trb(1, (i < 255 ? 1 << 4 : 1 << 5) | (1 << 2)));
  }
  d.w32(DB + 4 * slot, 3);
  assert.equal(dev.pendingIn, 4, '4 × 16 MiB fit in the 64 MiB budget, the fifth waits');
  d.ring(slot, 2).push(0x55, 0, 1, trb(1, (1 << 5) | (1 << 6)));
  d.w32(DB + 4 * slot, 2);
  assert.equal(dev.pendingIn, 4, 'the first IN finished and the waiting fifth took its place');
  assert.equal(d.counters.get('transfers'), 5 + 1, 'all five IN TDs and the OUT were submitted');
  const ev = d.events();
  assert.deepEqual(ev.filter((e) => e.ep === 3).map((e) => [e.code, e.length]), [[CC.SHORT, 0x10000 - 1]]);
});

test('isochronous TDs, BEI, Evaluate Context, and a short packet without ISP', () => {
  const d = new Driver();
  d.start();
  const dev = new LoopbackDevice('super');
  d.hc.attach(2, dev);
  const slot = d.enumerate(2, 4);
  assert.equal(d.configure(slot, [[2, 2], [3, 5]]).code, CC.SUCCESS); // bulk OUT, isoch IN
  // Isoch IN of 16 bytes with 4 available: Short Packet, the endpoint keeps running.
  d.ring(slot, 2).push(0x04030201, 0, 4, trb(1, (1 << 5) | (1 << 6)));
  d.w32(DB + 4 * slot, 2);
  d.events();
  const iso = d.ring(slot, 3).push(DATA, 0, 16, trb(5, (1 << 5) | (1 << 2)));
  d.w32(DB + 4 * slot, 3);
  let ev = d.events();
  assert.deepEqual(ev.map((e) => [e.code, e.param, e.length]), [[CC.SHORT, iso, 12]]);
  assert.deepEqual(bytes(d, DATA, 4), [1, 2, 3, 4]);
  assert.equal(d.epState(slot, 3), 1);
  // A Normal TRB at the head of an isoch TD is a TRB Error.
  const bad = d.ring(slot, 3).push(DATA, 0, 16, trb(1, 1 << 5));
  d.w32(DB + 4 * slot, 3);
  ev = d.events();
  assert.deepEqual(ev.map((e) => [e.code, e.param]), [[CC.TRB, bad]]);

  // BEI: the event is written but no interrupt; the next event without BEI interrupts.
  d.w32(IR0, 3); // an INTx driver clears IP
  const raised = d.raised.length;
  d.ring(slot, 2).push(0x1, 0, 1, trb(1, (1 << 5) | (1 << 6) | (1 << 9)));
  d.w32(DB + 4 * slot, 2);
  assert.equal(d.raised.length, raised);
  assert.equal(d.events().length, 1);
  d.ring(slot, 2).push(0x1, 0, 1, trb(1, (1 << 5) | (1 << 6)));
  d.w32(DB + 4 * slot, 2);
  assert.equal(d.raised.length, raised + 1);
  d.events();

  // Evaluate Context: EP0 Max Packet Size and the slot's Max Exit Latency.
  d.dma.fill(INPUT_CTX, 33 * 32, 0);
  d.dma.writeU32(INPUT_CTX + 4, 3);
  d.dma.writeU32(INPUT_CTX + 32 + 4, 0x1234);
  d.dma.writeU32(INPUT_CTX + 64 + 4, 512 << 16);
  assert.equal(d.command(INPUT_CTX, 0, 0, trb(13, slot << 24)).code, CC.SUCCESS);
  const out = 0x8000 + 0x400 * slot;
  assert.equal(d.dma.readU32(out + 4) & 0xffff, 0x1234);
  assert.equal(d.dma.readU32(out + 32 + 4) >>> 16, 512);

  // Bulk IN without ISP on a chain that comes up short: the IOC TRB reports the whole shortfall.
  const dOut = new Driver();
  dOut.start();
  const lb = new LoopbackDevice('high');
  dOut.hc.attach(5, lb);
  const s2 = dOut.enumerate(5, 3);
  dOut.configure(s2, [[2, 2], [3, 6]]);
  dOut.ring(s2, 2).push(0x0201, 0, 2, trb(1, (1 << 5) | (1 << 6)));
  dOut.w32(DB + 4 * s2, 2);
  dOut.events();
  dOut.ring(s2, 3).push(DATA, 0, 8, trb(1, 1 << 4));
  const lastTrb = dOut.ring(s2, 3).push(DATA + 8, 0, 8, trb(1, 1 << 5));
  dOut.w32(DB + 4 * s2, 3);
  ev = dOut.events();
  assert.deepEqual(ev.map((e) => [e.code, e.param, e.length]), [[CC.SHORT, lastTrb, 14]]);
});

test('Stop Endpoint on an idle endpoint posts no Transfer Event', () => {
  const d = new Driver();
  d.start();
  d.hc.attach(5, new LoopbackDevice('high'));
  const slot = d.enumerate(5, 3);
  d.configure(slot, [[3, 6]]);
  const at = d.cmd.push(0, 0, 0, trb(15, (slot << 24) | (3 << 16)));
  d.w32(DB, 0);
  assert.deepEqual(d.events().map((e) => [e.type, e.param]), [[T.COMMAND, at]]);
  assert.equal(d.epState(slot, 3), 3);
});

test('rings wrap: Link TRBs with Toggle Cycle on the command ring, event ring cycle flips', () => {
  const d = new Driver();
  d.start(16);
  for (let i = 0; i < 200; i++) {
    const ev = d.command(0, 0, 0, trb(23));
    assert.equal(ev.code, CC.SUCCESS, `command ${i}`);
  }
  assert.equal(d.eventCycle, d.hc.interrupters[0].cycleState);
  assert.equal(d.eventDeq, d.hc.interrupters[0].enqueue);
  assert.equal(d.usbsts & 1, 0);
});

test('MMIO accesses are counted per register: what an interrupt handler and a doorbell cost in exits', () => {
  const d = new Driver();
  d.start();
  d.counters.clear();
  // Linux's xhci_irq under MSI-X: USBSTS read and EINT clear, ERDP read and write as two dwords each.
  d.w32(OP + 4, d.usbsts | 8);
  d.r32(IR0 + 0x18);
  d.r32(IR0 + 0x1c);
  d.w64(IR0 + 0x18, EVENT_RING | 8);
  d.hc.read(IR0, 4);
  d.w32(IR0 + 4, 160);
  d.hc.read(PORTSC(1), 4);
  d.w32(DB, 0);
  d.hc.read(0x14, 4); // DBOFF: a capability register
  d.hc.read(0xffff0, 4); // outside the BAR
  const c = (name: string) => d.counters.get(name) ?? 0;
  assert.equal(c('mmio-reads-usbsts'), 1);
  assert.equal(c('mmio-writes-usbsts'), 1);
  assert.equal(c('mmio-reads-erdp'), 2);
  assert.equal(c('mmio-writes-erdp'), 2);
  assert.equal(c('mmio-reads-iman'), 1);
  assert.equal(c('mmio-writes-imod'), 1);
  assert.equal(c('mmio-reads-portsc'), 1);
  assert.equal(c('mmio-writes-doorbell'), 1);
  assert.equal(c('mmio-reads-other'), 2);
  assert.equal(c('mmio-reads'), 1 + 2 + 1 + 1 + 2, 'the totals are still counted');
  assert.equal(c('mmio-writes'), 1 + 2 + 1 + 1);
});

test('the time from an interrupt to the handler\'s USBSTS read is counted once per interrupt (irq-to-handler-us)', () => {
  const d = new Driver();
  d.msi = true;
  d.start();
  d.clock.advance(5);
  d.hc.attach(1, new LoopbackDevice('super'));
  assert.equal(d.raised.length, 1);
  d.clock.advance(2.5);
  void d.usbsts; // the handler begins
  d.clock.advance(1);
  void d.usbsts; // a later read of the same handler: not another interrupt
  assert.equal(d.counters.get('irq-to-handler'), 1);
  assert.equal(d.counters.get('irq-to-handler-us'), 2500);
  void d.usbsts; // no interrupt pending: nothing counted
  assert.equal(d.counters.get('irq-to-handler'), 1);
});

/** Holds bulk IN transfers until the test finishes them; a cancel lets go of the buffer only later, as a usbfs discard does. */
class HeldInDevice extends LoopbackDevice {
  held: { t: UsbTransfer; done: (t: UsbTransfer) => void }[] = [];
  override submit(t: UsbTransfer, done: (t: UsbTransfer) => void): void {
    if (t.type === 'bulk' && t.in) this.held.push({ t, done });
    else super.submit(t, done);
  }
  override cancel(t: UsbTransfer): void {
    this.cancelled.push(t);
  }
  finish(i: number, fill: number, actual: number): void {
    const { t, done } = this.held[i];
    t.data.fill(fill, 0, actual);
    t.actualLength = actual;
    t.status = 'ok';
    done(t);
  }
}

test('a big TD reuses the buffer of one the device completed and the controller scattered, never one of a dropped TD', () => {
  const d = new Driver();
  d.start();
  const dev = new HeldInDevice('high');
  d.hc.attach(5, dev);
  const slot = d.enumerate(5, 3);
  d.configure(slot, [[3, 6]]);
  const inRing = d.ring(slot, 3);
  const bigIn = (at: number) => {
    inRing.push(at, 0, 0x10000, trb(1, (1 << 5) | (1 << 2)));
    d.w32(DB + 4 * slot, 3);
    return dev.held[dev.held.length - 1].t;
  };
  const a = bigIn(DATA);
  assert.equal(a.data.length, 0x10000);
  dev.finish(0, 0xaa, 0x10000);
  assert.deepEqual(bytes(d, DATA + 0xfffc, 4), [0xaa, 0xaa, 0xaa, 0xaa], 'scattered before the buffer went back');
  const b = bigIn(DATA + 0x10000);
  assert.equal(b.data.buffer, a.data.buffer, 'the next big TD reuses it');
  // Stop Endpoint drops B, but the device has not let go of its buffer yet.
  assert.equal(d.command(0, 0, 0, trb(15, (slot << 24) | (3 << 16))).code, CC.SUCCESS);
  assert.equal(dev.cancelled.length, 1);
  const next = inRing.push(DATA + 0x20000, 0, 0x10000, trb(1, (1 << 5) | (1 << 2)));
  assert.equal(d.command(next | inRing.cycle, 0, 0, trb(16, (slot << 24) | (3 << 16))).code, CC.SUCCESS);
  d.w32(DB + 4 * slot, 3);
  const c = dev.held[2].t;
  assert.notEqual(c.data.buffer, a.data.buffer, 'a buffer the device still holds is not handed out');
  // The device lets go of B (its late completion changes nothing in the guest), then finishes C short.
  dev.finish(1, 0xbb, 0x10000);
  assert.deepEqual(bytes(d, DATA + 0x10000, 4), [0, 0, 0, 0], 'a dropped TD is not scattered');
  dev.finish(2, 0x55, 16);
  const ev = d.events().filter((e) => e.ep === 3);
  assert.deepEqual(ev.map((e) => [e.code, e.length]), [[CC.SHORT, 0x10000 - 16]], 'C came back short, and nothing for B');
  // D reuses C's buffer, whose old bytes past what its device moves never reach the guest; B's stays out.
  const dd = bigIn(DATA + 0x30000);
  assert.equal(dd.data.buffer, c.data.buffer);
  assert.notEqual(dd.data.buffer, a.data.buffer, 'a dropped TD\'s buffer is never handed out again');
  dev.finish(3, 0x66, 8);
  assert.deepEqual(bytes(d, DATA + 0x30000, 12), [0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0, 0, 0, 0]);
});
