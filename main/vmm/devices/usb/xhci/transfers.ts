// Transfer rings: TDs fetched from an endpoint's ring become UsbTransfers; completions write
// IN data back and post Transfer Events in TD order. An Isoch TD is one packet (one service
// interval) and runs as soon as it is fetched: SIA and Frame ID are not scheduled against
// MFINDEX, the device's own frames (a passed-through device's host controller) pace it.
import { DMA_OK } from '../../../memory/dma';
import { transferLength, type UsbDevice, type UsbSetup, type UsbTransfer, type UsbTransferType } from '../usb-device';
import {
  CC_BABBLE, CC_SHORT_PACKET, CC_STALL, CC_STOPPED_LENGTH_INVALID, CC_SUCCESS, CC_TRANSACTION_ERROR, CC_TRB_ERROR,
  EP_HALTED, EP_RUNNING, EP_STOPPED, EPT_CONTROL, EPT_INTR_IN, EPT_INTR_OUT, EPT_ISOCH_IN, EPT_ISOCH_OUT,
  MAX_INFLIGHT_BYTES, MAX_TD_BYTES, SMALL_TD_BYTES, MAX_TDS_IN_FLIGHT, MAX_TDS_PER_KICK, MAX_TRBS_PER_KICK, MAX_TRBS_PER_TD, TRB_BEI, TRB_CH, TRB_DATA, TRB_DIR_IN,
  TRB_EVENT_DATA, TRB_IDT, TRB_IOC, TRB_ISOCH, TRB_ISP, TRB_NOOP, TRB_NORMAL, TRB_SETUP, TRB_STATUS,
  TRB_TRANSFER_EVENT,
} from './constants';
import { type Endpoint, high32, low32, pointer, type Slot, type Td, type Trb, trbType, type XhciServices } from './core';
import { FETCH_DMA_ERROR, FETCH_EMPTY, FETCH_OK, fetchTrb, newTrb, type RingCursor } from './rings';
import type { UsbCaptureTap } from './capture';
import type { UsbTrafficStats } from './traffic-stats';
import { POOLED_TD_BYTES, TdBufferPool } from './td-buffers';

function isDataTrb(type: number): boolean {
  return type === TRB_NORMAL || type === TRB_DATA || type === TRB_ISOCH;
}

function transferType(epType: number): UsbTransferType {
  if (epType === EPT_CONTROL) return 'control';
  if (epType === EPT_ISOCH_OUT || epType === EPT_ISOCH_IN) return 'isochronous';
  if (epType === EPT_INTR_OUT || epType === EPT_INTR_IN) return 'interrupt';
  return 'bulk';
}

/** Retired TDs an endpoint keeps for reuse, and the TRB records each keeps (a 1 MiB TD of 4 KiB TRBs fits). */
const SPARE_TDS = 4;
const SPARE_TRBS = 512;
/** Bulk TDs at least this long go to a device that moves guest memory itself as guest segments. */
const GUEST_SEGMENTS_MIN_BYTES = 4096;
const NO_DATA = new Uint8Array(0);
/** PORTHOLE_XHCI_FRESH_TD_BUFFERS=1: every TD gets a new buffer (the old way, for comparing). */
const freshTdBuffers = process.env.PORTHOLE_XHCI_FRESH_TD_BUFFERS === '1';
/** What a completed transfer moved: an OUT that succeeded all of it, else what the device reports. */
function movedBytes(t: UsbTransfer): number {
  const total = transferLength(t);
  if (t.status === 'ok' && !t.in) return total;
  const actual = t.actualLength;
  return Number.isInteger(actual) && actual > 0 ? Math.min(actual, total) : 0;
}

const immediate = new Uint8Array(8);
const immediateView = new DataView(immediate.buffer);

export class TransferEngine {
  /** Buffer bytes of the TDs in flight, and the endpoints waiting for some of them to finish. */
  private inflightBytes = 0;
  /** Data buffers of big TDs, reused across TDs (td-buffers.ts). */
  readonly buffers = new TdBufferPool();
  private readonly starved = new Set<Endpoint>();
  /** fetchTd's ring cursor (a nested fetch from a completion starts after the outer one is done with it). */
  private readonly cursor: RingCursor = { ptr: 0, cycle: 1 };
  /** The running USB capture, or null (then capturing costs one null check per transfer). */
  capture: UsbCaptureTap | null = null;
  /** Per device and endpoint counters, or null (tests without a registry). */
  traffic: UsbTrafficStats | null = null;

  constructor(private readonly hc: XhciServices) {}

  /** A doorbell for endpoint `dci` of a slot. */
  doorbell(slotId: number, dci: number): void {
    const slot = this.hc.slots[slotId];
    if (slot === undefined || !slot.enabled || dci < 1 || dci > 31) return;
    const ep = slot.endpoints[dci];
    if (ep === null) return;
    if (ep.state === EP_STOPPED) {
      ep.state = EP_RUNNING;
      this.writeEndpointContext(slot, ep);
    }
    if (ep.state === EP_RUNNING) this.kick(slot, ep);
  }

  /** Fetches and submits TDs until the ring is empty, the endpoint is busy, or the work bound. */
  kick(slot: Slot, ep: Endpoint): void {
    if (ep.kicking) return;
    ep.kicking = true;
    try {
      let tds = 0;
      ep.trbBudget = MAX_TRBS_PER_KICK;
      while (ep.state === EP_RUNNING && this.hc.running() && ep.inflight.length < MAX_TDS_IN_FLIGHT) {
        const last = ep.inflight[ep.inflight.length - 1];
        if (last !== undefined && last.errorCode !== 0) break; // nothing past a broken TD
        if (tds >= MAX_TDS_PER_KICK || ep.trbBudget < MAX_TRBS_PER_TD) {
          if (ep.cancelTimer === null) {
            ep.cancelTimer = this.hc.setTimer(0, () => {
              ep.cancelTimer = null;
              this.kick(slot, ep);
            });
          }
          break;
        }
        if (!this.fetchTd(slot, ep)) break;
        tds++;
      }
    } finally {
      ep.kicking = false;
    }
  }

  /** A TD record for `ep`: a retired one again (its TRB objects too), or a new one. */
  private takeTd(ep: Endpoint): Td {
    const td = ep.spareTds.pop();
    if (td === undefined) {
      return {
        transfer: null, errorTrb: 0, errorCode: 0, trbs: [], count: 0, start: 0, startCycle: 0, end: 0, endCycle: 0,
        complete: false, stale: false, lengths: [], submittedMs: 0,
      };
    }
    td.transfer = null;
    td.errorTrb = td.errorCode = td.count = td.start = td.startCycle = td.end = td.endCycle = td.submittedMs = 0;
    td.complete = td.stale = false;
    return td;
  }

  /** Reads one TD at ep.fetch and submits it. False when there is none (or the ring broke). */
  private fetchTd(slot: Slot, ep: Endpoint): boolean {
    const cursor = this.cursor;
    cursor.ptr = ep.fetch;
    cursor.cycle = ep.fetchCycle;
    const td = this.takeTd(ep);
    const trbs = td.trbs;
    const start = cursor.ptr;
    let startCycle = cursor.cycle;
    let control = false;
    let sawStatus = false;
    for (;;) {
      let trb = trbs[td.count];
      if (trb === undefined) {
        trb = newTrb();
        trbs.push(trb);
      }
      const r = fetchTrb(this.hc.dma, cursor, trb);
      if (r !== FETCH_OK) {
        if (r === FETCH_EMPTY || r === FETCH_DMA_ERROR) {
          this.recycle(ep, td);
          // FETCH_EMPTY: the TD is not all there yet.
          if (r === FETCH_DMA_ERROR) this.hc.fatal(`transfer ring of slot ${slot.id} DCI ${ep.dci}: TRB at 0x${cursor.ptr.toString(16)} is not readable`);
          return false;
        }
        return this.brokenTd(slot, ep, start, startCycle, cursor.ptr, td);
      }
      if (td.count === 0) startCycle = cursor.cycle;
      ep.trbBudget--;
      td.count++;
      cursor.ptr += 16;
      const type = trbType(trb.control);
      if (td.count === 1) control = type === TRB_SETUP;
      if (type === TRB_STATUS) sawStatus = true;
      const chained = (trb.control & TRB_CH) !== 0;
      if (control ? sawStatus && !chained : !chained) break;
      if (td.count >= MAX_TRBS_PER_TD) return this.brokenTd(slot, ep, trbs[0].addr, startCycle, trb.addr, td);
    }
    // A TD starting after Links starts at its first TRB.
    td.start = trbs[0].addr;
    td.startCycle = startCycle;
    td.end = cursor.ptr;
    td.endCycle = cursor.cycle;
    return this.submitTd(slot, ep, td);
  }

  /** Queues a TRB Error at `trbAddr`: reported in order, then the endpoint halts. */
  private brokenTd(slot: Slot, ep: Endpoint, start: number, startCycle: number, trbAddr: number, reuse?: Td): boolean {
    this.hc.count('trb-errors');
    const td = reuse ?? this.takeTd(ep);
    td.count = 0;
    td.errorTrb = trbAddr;
    td.errorCode = CC_TRB_ERROR;
    td.start = td.end = start;
    td.startCycle = td.endCycle = startCycle;
    td.complete = true;
    ep.inflight.push(td);
    this.retire(slot, ep);
    return false;
  }

  private submitTd(slot: Slot, ep: Endpoint, td: Td): boolean {
    const { trbs, lengths, start, startCycle, count } = td;
    let total = 0;
    let setup: UsbSetup | null = null;
    let dirIn = (ep.dci & 1) === 1;
    const firstType = trbType(trbs[0].control);
    const isControlEp = ep.type === EPT_CONTROL;
    const isIsochEp = ep.type === EPT_ISOCH_IN || ep.type === EPT_ISOCH_OUT;
    let stage = 0; // control: 0 setup seen, 1 in data stage, 2 status seen
    let dataTrbs = 0;
    for (let i = 0; i < count; i++) {
      const trb = trbs[i];
      const type = trbType(trb.control);
      let bad = false;
      if (firstType === TRB_SETUP) {
        if (i === 0) {
          bad = !isControlEp || (trb.control & TRB_IDT) === 0 || (trb.status & 0x1ffff) !== 8;
        } else if (type === TRB_DATA) {
          bad = stage !== 0 || dataTrbs > 0;
          stage = 1;
          dirIn = (trb.control & TRB_DIR_IN) !== 0;
        } else if (type === TRB_NORMAL) {
          bad = stage !== 1;
        } else if (type === TRB_STATUS) {
          bad = stage === 2;
          stage = 2;
        } else {
          bad = type !== TRB_EVENT_DATA && type !== TRB_NOOP;
        }
      } else if (firstType === TRB_NORMAL || firstType === TRB_ISOCH) {
        if (i === 0) bad = isControlEp || (firstType === TRB_ISOCH) !== isIsochEp;
        else bad = type !== TRB_NORMAL && type !== TRB_EVENT_DATA && type !== TRB_NOOP;
      } else {
        // A lone No-Op or Event Data; anything else (a Status without Setup, a command TRB) is an error.
        bad = count !== 1 || (type !== TRB_NOOP && type !== TRB_EVENT_DATA);
      }
      if (!bad && isDataTrb(type)) {
        const length = trb.status & 0x1ffff;
        if ((trb.control & TRB_IDT) !== 0 && (length > 8 || dirIn)) bad = true;
        lengths[i] = length;
        total += length;
        dataTrbs++;
        if (total > MAX_TD_BYTES) bad = true;
      } else {
        lengths[i] = -1;
      }
      if (bad) return this.brokenTd(slot, ep, start, startCycle, trb.addr, td);
    }
    if (isIsochEp && firstType === TRB_ISOCH && total > ep.maxPacket * (ep.maxBurst + 1) * (ep.mult + 1)) {
      // More than one service interval carries (wMaxPacketSize × burst × mult): a TRB Error.
      return this.brokenTd(slot, ep, start, startCycle, trbs[0].addr, td);
    }
    if (firstType === TRB_SETUP) {
      if (stage !== 2) return this.brokenTd(slot, ep, start, startCycle, trbs[count - 1].addr, td);
      const s = trbs[0];
      setup = {
        requestType: s.p0 & 0xff, request: (s.p0 >>> 8) & 0xff, value: s.p0 >>> 16, index: s.p1 & 0xffff, length: s.p1 >>> 16,
      };
      if (dataTrbs === 0) dirIn = (setup.requestType & 0x80) !== 0;
    }
    if (firstType !== TRB_SETUP && firstType !== TRB_NORMAL && firstType !== TRB_ISOCH) {
      td.complete = true; // No-Op / Event Data: only its event
      ep.fetch = td.end;
      ep.fetchCycle = td.endCycle;
      ep.inflight.push(td);
      this.retire(slot, ep);
      return true;
    }
    if (total > 0 && this.inflightBytes > 0 && this.inflightBytes + total > MAX_INFLIGHT_BYTES
      && !(ep.inflight.length === 0 && total <= SMALL_TD_BYTES)) {
      // Over the controller's budget: the TD stays on the ring until others finish. An idle
      // endpoint may still send a small TD (an OUT that a big pending IN waits for); only
      // devices on ports have TDs in flight, so that is bounded too.
      this.starved.add(ep);
      this.recycle(ep, td);
      return false;
    }
    ep.fetch = td.end;
    ep.fetchCycle = td.endCycle;
    const device = this.deviceOf(slot);
    // A device that moves guest memory itself (a disk reading into it with preadv) gets the
    // TD's buffers as segments, unless a capture wants the bytes on their way.
    const guest = device !== null && device.movesGuestMemory === true && this.capture === null && total >= GUEST_SEGMENTS_MIN_BYTES
      && transferType(ep.type) === 'bulk' ? this.cachedGuestSegments(ep, td, dirIn) : null;
    // A big TD that carries its own bytes reuses a buffer (td-buffers.ts); a capture keeps
    // what it saw, so it gets fresh ones.
    const data = guest !== null ? NO_DATA
      : total >= POOLED_TD_BYTES && this.capture === null && !freshTdBuffers ? this.buffers.take(total) : new Uint8Array(total);
    if (!dirIn && guest === null) {
      let at = 0;
      for (let i = 0; i < count; i++) {
        const n = lengths[i];
        if (n <= 0) continue;
        const trb = trbs[i];
        if (trb.control & TRB_IDT) {
          immediateView.setUint32(0, trb.p0, true);
          immediateView.setUint32(4, trb.p1, true);
          data.set(immediate.subarray(0, n), at);
        } else if (this.hc.dma.read(pointer(trb.p0, trb.p1), data.subarray(at, at + n)) !== DMA_OK) {
          this.hc.fatal(`slot ${slot.id} DCI ${ep.dci}: OUT buffer of TRB 0x${trb.addr.toString(16)} is not readable`);
          return false;
        }
        at += n;
      }
    }
    // One shape for every transfer (guest and isoPackets always present, maybe undefined).
    const transfer: UsbTransfer = {
      endpoint: ep.dci >>> 1, in: dirIn, type: transferType(ep.type), setup, data,
      isoPackets: isIsochEp ? [total] : undefined, guest: guest ?? undefined, guestLength: guest !== null ? total : undefined,
      status: 'pending', actualLength: 0,
    };
    td.transfer = transfer;
    ep.inflight.push(td);
    this.inflightBytes += total;
    this.hc.count('transfers');
    if (this.capture !== null) this.capture.submit(slot.port, slot.address, transfer);
    if (device === null) {
      transfer.status = 'no-device';
      if (this.capture !== null) this.capture.complete(slot.port, slot.address, transfer);
      td.complete = true;
      this.retire(slot, ep);
      return true;
    }
    let called = false;
    if (this.traffic !== null) td.submittedMs = performance.now();
    device.submit(transfer, () => {
      // A TD the controller dropped keeps its buffer out of the pool for good: a device may
      // call done at the cancel while the host still writes there (a usbfs URB copies its
      // data in when it is reaped, after the discard).
      if (called || td.stale) return;
      called = true;
      if (this.traffic !== null) this.traffic.completed(slot.port, ep.dci, movedBytes(transfer), performance.now() - td.submittedMs);
      if (this.capture !== null) this.capture.complete(slot.port, slot.address, transfer);
      td.complete = true;
      this.retire(slot, ep);
      if (!ep.kicking && ep.state === EP_RUNNING) this.kick(slot, ep);
    });
    return true;
  }

  /**
   * Windows onto guest memory for the TD's data TRBs, in order; null if one is immediate data
   * or is not wholly inside one RAM region (the copying path then reports it as it does).
   */
  /**
   * guestSegments, or the endpoint's previous windows when this TD names the same buffers (a
   * program reading a file into one buffer, as dd does, does so for every command) and the
   * memory map has not changed: no windows made per TRB. The list is only read by devices.
   */
  private cachedGuestSegments(ep: Endpoint, td: Td, dirIn: boolean): Uint8Array[] | null {
    const cache = ep.guestCache;
    const regions = this.hc.dma.memory.regions;
    if (cache.segments !== null && cache.regions === regions && cache.dirIn === dirIn) {
      const { trbs, lengths, count } = td;
      const key = cache.key;
      let k = 0;
      let same = true;
      for (let i = 0; i < count && same; i++) {
        const n = lengths[i];
        if (n <= 0) continue;
        const trb = trbs[i];
        same = (trb.control & TRB_IDT) === 0 && k + 2 <= cache.keyLength && key[k] === pointer(trb.p0, trb.p1) && key[k + 1] === n;
        k += 2;
      }
      // check(): bus mastering may have been turned off since.
      if (same && k === cache.keyLength && k > 0 && this.hc.dma.check(key[0], key[1], dirIn) === DMA_OK) return cache.segments;
    }
    const segments = this.guestSegments(td, dirIn);
    // Kept only for TDs of ordinary size, so what an endpoint holds stays small.
    cache.segments = td.count <= SPARE_TRBS ? segments : null;
    if (cache.segments !== null) {
      cache.regions = regions;
      cache.dirIn = dirIn;
      let k = 0;
      for (let i = 0; i < td.count; i++) {
        const n = td.lengths[i];
        if (n <= 0) continue;
        cache.key[k++] = pointer(td.trbs[i].p0, td.trbs[i].p1);
        cache.key[k++] = n;
      }
      cache.keyLength = k;
    }
    return segments;
  }

  private guestSegments(td: Td, dirIn: boolean): Uint8Array[] | null {
    const { trbs, lengths, count } = td;
    const segments = new Array<Uint8Array>(count); // at most one per TRB; trimmed below
    let k = 0;
    // Buffers that follow each other in guest memory become one window (one iovec).
    let runFirst = -1;
    let runStart = 0;
    let runLength = 0;
    for (let i = 0; i <= count; i++) {
      let address = 0;
      let n = 0;
      if (i < count) {
        n = lengths[i];
        if (n <= 0) continue;
        const trb = trbs[i];
        if (trb.control & TRB_IDT) return null;
        address = pointer(trb.p0, trb.p1);
        if (runFirst >= 0 && address === runStart + runLength) {
          runLength += n;
          continue;
        }
      }
      if (runFirst >= 0) {
        k = this.pushRun(segments, k, td, runFirst, i, runStart, runLength, dirIn);
        if (k < 0) return null;
      }
      runFirst = i;
      runStart = address;
      runLength = n;
    }
    segments.length = k;
    return segments;
  }

  /**
   * Windows onto the run of TRBs [first, end) from segments[k] on: one, or one per TRB where the
   * run crosses a region edge. The next k, or -1 when a buffer is not guest RAM.
   */
  private pushRun(segments: Uint8Array[], k: number, td: Td, first: number, end: number, address: number, length: number, dirIn: boolean): number {
    const view = this.hc.dma.view(address, length, dirIn);
    if (view !== null) {
      segments[k] = view;
      return k + 1;
    }
    for (let i = first; i < end; i++) {
      const n = td.lengths[i];
      if (n <= 0) continue;
      const v = this.hc.dma.view(pointer(td.trbs[i].p0, td.trbs[i].p1), n, dirIn);
      if (v === null) return -1;
      segments[k++] = v;
    }
    return k;
  }

  deviceOf(slot: Slot): UsbDevice | null {
    return this.hc.ports[slot.port - 1]?.device ?? null;
  }

  /** Finishes completed TDs at the head of the endpoint's queue, in order. */
  private retire(slot: Slot, ep: Endpoint): void {
    while (ep.inflight.length > 0 && ep.inflight[0].complete) {
      const td = ep.inflight.shift() as Td;
      this.release(td);
      const going = this.finish(slot, ep, td);
      // The device called done and finish scattered IN bytes: the buffer may serve another TD.
      if (td.transfer !== null) this.buffers.give(td.transfer.data);
      this.recycle(ep, td);
      if (!going) return;
      ep.deq = td.end;
      ep.deqCycle = td.endCycle;
    }
  }

  /** Keeps a retired TD for the next fetch (a few per endpoint, their TRB lists bounded). */
  private recycle(ep: Endpoint, td: Td): void {
    td.transfer = null; // its windows onto guest memory go
    if (ep.spareTds.length >= SPARE_TDS) return;
    if (td.trbs.length > SPARE_TRBS) td.trbs.length = SPARE_TRBS;
    if (td.lengths.length > SPARE_TRBS) td.lengths.length = SPARE_TRBS;
    ep.spareTds.push(td);
  }

  /** Posts the TD's events. False when the endpoint halted (or the controller did). */
  private finish(slot: Slot, ep: Endpoint, td: Td): boolean {
    if (td.errorCode !== 0) {
      this.halt(slot, ep, td);
      this.event(slot, ep, td.errorTrb, 0, td.errorCode, 0, false, 0, false);
      return false;
    }
    const t = td.transfer;
    if (t === null) {
      this.postCompletionEvents(slot, ep, td, 0, false);
      return true;
    }
    const total = transferLength(t);
    const actual = Math.max(0, Math.min(total, Number.isInteger(t.actualLength) ? t.actualLength : 0));
    if (t.status === 'ok') {
      // Guest segments hold IN bytes already (the device wrote them there).
      if (t.in && actual > 0 && t.guest === undefined && !this.scatter(slot, ep, td, actual)) return false;
      this.hc.count(t.in ? 'bytes-in' : 'bytes-out', t.in ? actual : total);
      this.postCompletionEvents(slot, ep, td, t.in ? actual : total, t.in);
      return this.hc.running();
    }
    const code = t.status === 'stall' ? CC_STALL : t.status === 'babble' ? CC_BABBLE : CC_TRANSACTION_ERROR;
    this.hc.count('transfer-errors');
    // The TRB where the transfer stopped, and what was left of it.
    let at = td.trbs[td.count - 1];
    let residual = 0;
    let before = 0;
    for (let i = 0; i < td.count; i++) {
      const n = td.lengths[i];
      if (n < 0) continue;
      if (actual < before + n || (n === 0 && actual === before)) {
        at = td.trbs[i];
        residual = before + n - actual;
        break;
      }
      before += n;
    }
    const isoch = ep.type === EPT_ISOCH_IN || ep.type === EPT_ISOCH_OUT;
    if (!isoch) this.halt(slot, ep, td);
    this.event(slot, ep, at.addr, 0, code, residual, false, (at.status >>> 22) & 0x3ff, false);
    return isoch && this.hc.running();
  }

  /** Writes `actual` IN bytes into the TD's data buffers. */
  private scatter(slot: Slot, ep: Endpoint, td: Td, actual: number): boolean {
    const data = (td.transfer as UsbTransfer).data;
    let at = 0;
    for (let i = 0; i < td.count && at < actual; i++) {
      const n = Math.min(td.lengths[i], actual - at);
      if (n <= 0) continue;
      const trb = td.trbs[i];
      if (this.hc.dma.write(pointer(trb.p0, trb.p1), data.subarray(at, at + n)) !== DMA_OK) {
        this.hc.fatal(`slot ${slot.id} DCI ${ep.dci}: IN buffer of TRB 0x${trb.addr.toString(16)} is not writable`);
        return false;
      }
      at += n;
    }
    return true;
  }

  /**
   * The events of a TD that completed: one per IOC TRB, Short Packet where an IN transfer came
   * up short (on a TRB with ISP or IOC, else on the TD's last IOC TRB), Event Data events with
   * the bytes moved since the last one (EDTLA). A control TD still runs its Status stage.
   */
  private postCompletionEvents(slot: Slot, ep: Endpoint, td: Td, moved: number, canBeShort: boolean): void {
    let remaining = moved;
    let edtla = 0;
    let short = false;
    let shortReported = false;
    for (let i = 0; i < td.count; i++) {
      const trb = td.trbs[i];
      const type = trbType(trb.control);
      const ioc = (trb.control & TRB_IOC) !== 0;
      const target = (trb.status >>> 22) & 0x3ff;
      const bei = (trb.control & TRB_BEI) !== 0 && (type === TRB_NORMAL || type === TRB_ISOCH || type === TRB_EVENT_DATA);
      if (isDataTrb(type)) {
        if (short) continue;
        const n = td.lengths[i];
        const got = Math.min(n, remaining);
        remaining -= got;
        edtla += got;
        if (got < n && canBeShort) {
          short = true;
          if (ioc || (trb.control & TRB_ISP)) {
            this.event(slot, ep, trb.addr, 0, CC_SHORT_PACKET, n - got, false, target, bei);
            shortReported = true;
          }
        } else if (ioc) {
          this.event(slot, ep, trb.addr, 0, CC_SUCCESS, 0, false, target, bei);
        }
      } else if (type === TRB_EVENT_DATA) {
        if (ioc) this.event(slot, ep, trb.p0, trb.p1, short ? CC_SHORT_PACKET : CC_SUCCESS, edtla, true, target, bei);
        edtla = 0;
      } else if (ioc) {
        this.event(slot, ep, trb.addr, 0, CC_SUCCESS, 0, false, target, false);
      }
    }
    if (short && !shortReported && td.transfer?.type !== 'control') {
      const last = td.trbs[td.count - 1];
      if ((last.control & TRB_IOC) && isDataTrb(trbType(last.control))) {
        // No ISP where it came up short: the TD's IOC TRB reports it, with what the whole TD
        // lacks (a driver computes requested - residual).
        const lacking = Math.min(0xffffff, transferLength(td.transfer as UsbTransfer) - moved);
        this.event(slot, ep, last.addr, 0, CC_SHORT_PACKET, lacking, false, (last.status >>> 22) & 0x3ff, false);
      }
    }
  }

  private event(slot: Slot, ep: Endpoint, p0: number, p1: number, code: number, residual: number, eventData: boolean, target: number, bei: boolean): void {
    // A TRB address (p1 0) may be above 4 GiB: split it.
    const lo = p1 === 0 ? low32(p0) : p0;
    const hi = p1 === 0 ? high32(p0) : p1;
    this.hc.postEvent(
      target,
      lo, hi,
      ((code << 24) | (residual & 0xffffff)) >>> 0,
      ((slot.id << 24) | (ep.dci << 16) | (TRB_TRANSFER_EVENT << 10) | (eventData ? 1 << 2 : 0)) >>> 0,
      bei,
    );
  }

  /** The endpoint halts on `td`: later TDs are cancelled and will be fetched again after a reset. */
  private halt(slot: Slot, ep: Endpoint, td: Td): void {
    ep.state = EP_HALTED;
    ep.deq = td.start;
    ep.deqCycle = td.startCycle;
    this.dropInflight(ep, slot);
    ep.fetch = ep.deq;
    ep.fetchCycle = ep.deqCycle;
    this.writeEndpointContext(slot, ep);
  }

  /**
   * Stop Endpoint: cancels what is in flight; the TD that was running gets a Stopped - Length
   * Invalid event and will run again from its start unless software moves the dequeue pointer.
   */
  stop(slot: Slot, ep: Endpoint): void {
    const head = this.rewind(slot, ep);
    ep.state = EP_STOPPED;
    this.writeEndpointContext(slot, ep);
    if (head !== undefined && head.count > 0) {
      const trb = head.trbs[0];
      this.event(slot, ep, trb.addr, 0, CC_STOPPED_LENGTH_INVALID, 0, false, (trb.status >>> 22) & 0x3ff, false);
    }
  }

  /**
   * Drops what is in flight without events (unplug, port reset, controller halt): the ring
   * rewinds to the first unfinished TD.
   */
  abort(slot: Slot, ep: Endpoint): void {
    this.rewind(slot, ep);
    ep.cancelTimer?.();
    ep.cancelTimer = null;
  }

  /** Drops what is in flight and rewinds the ring to the first unfinished TD, which it returns. */
  private rewind(slot: Slot, ep: Endpoint): Td | undefined {
    const head = ep.inflight[0];
    if (head !== undefined) {
      ep.deq = head.start;
      ep.deqCycle = head.startCycle;
    }
    this.dropInflight(ep, slot);
    ep.fetch = ep.deq;
    ep.fetchCycle = ep.deqCycle;
    return head;
  }

  abortSlot(slot: Slot): void {
    for (const ep of slot.endpoints) if (ep !== null) this.abort(slot, ep);
  }

  private dropInflight(ep: Endpoint, slot: Slot): void {
    const tds = ep.inflight.splice(0);
    const device = this.deviceOf(slot);
    for (const td of tds) {
      td.stale = true;
      this.release(td);
    }
    this.starved.delete(ep);
    for (const td of tds) {
      if (td.transfer !== null && !td.complete && device !== null) {
        this.hc.count('transfers-cancelled');
        device.cancel(td.transfer);
      }
      if (this.capture !== null && td.transfer !== null && !td.complete) {
        this.capture.complete(slot.port, slot.address, td.transfer, device === null ? 'no-device' : 'cancelled');
      }
    }
  }

  private release(td: Td): void {
    if (td.transfer === null) return;
    this.inflightBytes -= transferLength(td.transfer);
    if (this.starved.size === 0) return;
    const waiting = [...this.starved];
    this.starved.clear();
    // Kicked from a timer: this runs inside another endpoint's completion.
    for (const ep of waiting) {
      const slot = this.hc.slots[ep.slotId];
      if (ep.cancelTimer === null) {
        ep.cancelTimer = this.hc.setTimer(0, () => {
          ep.cancelTimer = null;
          if (slot.endpoints[ep.dci] === ep && ep.state === EP_RUNNING) this.kick(slot, ep);
        });
      }
    }
  }

  /** Writes the endpoint's state and dequeue pointer to its output context. */
  writeEndpointContext(slot: Slot, ep: Endpoint): void {
    const base = slot.outputContext + 32 * ep.dci;
    const dw0 = this.hc.dma.readU32(base);
    if (dw0 < 0
      || this.hc.dma.writeU32(base, ((dw0 & ~7) | ep.state) >>> 0) !== DMA_OK
      || this.hc.dma.writeU64Halves(base + 8, ((low32(ep.deq) & ~0xf) | ep.deqCycle) >>> 0, high32(ep.deq)) !== DMA_OK) {
      this.hc.fatal(`slot ${slot.id}: output endpoint context at 0x${base.toString(16)} is not writable`);
    }
  }
}
