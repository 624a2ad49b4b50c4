// Test helpers for the USB stick: images in a temporary folder, CBW/CSW bytes, and a host that
// runs Bulk-Only Transport commands the way Linux's usb-storage does (CBW, data, CSW, with
// halt clearing and reset recovery).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { BlockBackend, BlockDoneCallback, BlockReadCallback } from '../../main/vmm/devices/usb/storage/block-backend';
import { BULK_IN, BULK_OUT } from '../../main/vmm/devices/usb/storage/usb-storage';
import type { UsbDevice, UsbTransfer } from '../../main/vmm/devices/usb/usb-device';
import { makeTransfer, request } from './usb';

export function tempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-usb-storage-'));
}

/** A file of `size` bytes whose every 512-byte block starts with its block number (LE32), the rest a pattern. */
export function makeImage(dir: string, size: number, name = 'stick.img'): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, imageBytes(size));
  return file;
}

export function imageBytes(size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 7 + (i >> 9)) & 0xff;
  for (let block = 0; block * 512 < size; block++) new DataView(bytes.buffer).setUint32(block * 512, block, true);
  return bytes;
}

export function cbw(tag: number, hostLength: number, dirIn: boolean, cdb: ArrayLike<number>, lun = 0): Uint8Array {
  const out = new Uint8Array(31);
  const view = new DataView(out.buffer);
  view.setUint32(0, 0x43425355, true);
  view.setUint32(4, tag, true);
  view.setUint32(8, hostLength, true);
  out[12] = dirIn ? 0x80 : 0x00;
  out[13] = lun;
  out[14] = cdb.length;
  out.set(Array.from(cdb).slice(0, 16), 15);
  return out;
}

export interface Csw {
  signature: number;
  tag: number;
  residue: number;
  status: number;
}

export function parseCsw(bytes: Uint8Array): Csw {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { signature: view.getUint32(0, true), tag: view.getUint32(4, true), residue: view.getUint32(8, true), status: bytes[12] };
}

/** Submits a transfer and resolves when it completes; throws if `done` runs twice. */
export function run(device: UsbDevice, transfer: UsbTransfer): Promise<UsbTransfer> {
  return new Promise((resolve, reject) => {
    let calls = 0;
    device.submit(transfer, (t) => {
      calls++;
      if (calls > 1) reject(new Error('done called twice'));
      else resolve(t);
    });
  });
}

export function bulkIn(length: number): UsbTransfer {
  return makeTransfer(BULK_IN & 0x0f, true, 'bulk', new Uint8Array(length).fill(0xee));
}

export function bulkOut(data: Uint8Array): UsbTransfer {
  return makeTransfer(BULK_OUT, false, 'bulk', data);
}

export function clearHalt(device: UsbDevice, address: number): string {
  return request(device, 0x02, 0x01, 0, address, 0).status;
}

export function endpointHalted(device: UsbDevice, address: number): boolean {
  const r = request(device, 0x82, 0x00, 0, address, 2);
  return (r.data[0] & 1) === 1;
}

/** Bulk-Only Mass Storage Reset, then CLEAR_FEATURE(ENDPOINT_HALT) on both bulk endpoints (spec 5.3.4). */
export function resetRecovery(device: UsbDevice): void {
  const r = request(device, 0x21, 0xff, 0, 0, 0);
  if (r.status !== 'ok') throw new Error(`mass storage reset: ${r.status}`);
  if (clearHalt(device, BULK_IN) !== 'ok' || clearHalt(device, BULK_OUT) !== 'ok') throw new Error('clear halt failed');
}

export interface CommandResult {
  data: Uint8Array;
  csw: Csw;
  /** Data-phase transfers that ended in STALL (then cleared), IN or OUT. */
  dataStalled: boolean;
  cswStalls: number;
}

export interface CommandOptions {
  /** Host direction and length (dCBWDataTransferLength); default: none, 0. */
  dirIn?: boolean;
  length?: number;
  /** OUT data (the host sends `length` bytes: these, then zeros). */
  out?: Uint8Array;
  /** Sizes of the data-phase transfers, cycled; default one transfer for everything. */
  chunks?: number[];
  cswBuffer?: number;
  lun?: number;
  tag?: number;
}

let nextTag = 1;

/** One command through CBW, data and CSW, clearing a halt where the host would. */
export async function scsi(device: UsbDevice, cdb: ArrayLike<number>, options: CommandOptions = {}): Promise<CommandResult> {
  const length = options.length ?? 0;
  const dirIn = options.dirIn ?? false;
  const tag = options.tag ?? nextTag++;
  const sent = await run(device, bulkOut(cbw(tag, length, dirIn, cdb, options.lun ?? 0)));
  if (sent.status !== 'ok') throw new Error(`CBW: ${sent.status}`);
  const received: Uint8Array[] = [];
  let moved = 0;
  let dataStalled = false;
  let chunk = 0;
  while (moved < length) {
    const sizes = options.chunks ?? [length];
    const size = Math.min(sizes[chunk++ % sizes.length], length - moved);
    if (dirIn) {
      const t = await run(device, bulkIn(size));
      if (t.status === 'stall') {
        dataStalled = true;
        clearHalt(device, BULK_IN);
        break;
      }
      if (t.status !== 'ok') throw new Error(`data in: ${t.status}`);
      received.push(t.data.slice(0, t.actualLength));
      moved += t.actualLength;
      if (t.actualLength < size) break; // short packet: the data phase is over
    } else {
      const data = new Uint8Array(size);
      if (options.out) data.set(options.out.subarray(moved, moved + size));
      const t = await run(device, bulkOut(data));
      if (t.status === 'stall') {
        dataStalled = true;
        clearHalt(device, BULK_OUT);
        break;
      }
      if (t.status !== 'ok') throw new Error(`data out: ${t.status}`);
      moved += size;
    }
  }
  let cswStalls = 0;
  for (;;) {
    const t = await run(device, bulkIn(cswStalls === 0 ? options.cswBuffer ?? 13 : 13));
    if (t.status === 'stall' && cswStalls < 1) {
      cswStalls++;
      clearHalt(device, BULK_IN);
      continue;
    }
    if (t.status !== 'ok' || t.actualLength !== 13) throw new Error(`CSW: ${t.status}, ${t.actualLength} bytes`);
    const csw = parseCsw(t.data);
    if (csw.signature !== 0x53425355 || csw.tag !== tag) throw new Error(`CSW signature ${csw.signature.toString(16)} tag ${csw.tag} (sent ${tag})`);
    const data = new Uint8Array(received.reduce((n, r) => n + r.length, 0));
    let at = 0;
    for (const r of received) {
      data.set(r, at);
      at += r.length;
    }
    return { data, csw, dataStalled, cswStalls };
  }
}

/** REQUEST SENSE: [key, asc, ascq]. */
export async function senseOf(device: UsbDevice): Promise<[number, number, number]> {
  const r = await scsi(device, [0x03, 0, 0, 0, 18, 0], { dirIn: true, length: 18 });
  if (r.csw.status !== 0) throw new Error(`REQUEST SENSE status ${r.csw.status}`);
  return [r.data[2] & 0x0f, r.data[12], r.data[13]];
}

export function read10(lba: number, blocks: number): number[] {
  return [0x28, 0, lba >>> 24, (lba >>> 16) & 0xff, (lba >>> 8) & 0xff, lba & 0xff, 0, blocks >> 8, blocks & 0xff, 0];
}

export function write10(lba: number, blocks: number): number[] {
  return [0x2a, ...read10(lba, blocks).slice(1)];
}

function cdb16(op: number, lba: bigint, blocks: number): number[] {
  const out = new Uint8Array(16);
  const view = new DataView(out.buffer);
  out[0] = op;
  view.setBigUint64(2, lba);
  view.setUint32(10, blocks);
  return Array.from(out);
}

export function read16(lba: bigint | number, blocks: number): number[] {
  return cdb16(0x88, BigInt(lba), blocks);
}

export function write16(lba: bigint | number, blocks: number): number[] {
  return cdb16(0x8a, BigInt(lba), blocks);
}

/**
 * A BlockBackend over bytes in memory whose completions wait in a list until the test runs
 * them (in any order), and that records any request outside the image.
 */
export class DeferredBackend implements BlockBackend {
  readonly pending: (() => void)[] = [];
  readonly violations: string[] = [];
  failReads = false;
  failWrites = false;
  failFlush = false;
  reads = 0;
  writes = 0;
  flushes = 0;
  closed = false;
  constructor(readonly bytes: Uint8Array, readonly readOnly = false) {}
  get size(): number {
    return this.bytes.length;
  }
  private check(what: string, offset: number, length: number): boolean {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > this.size) {
      this.violations.push(`${what} ${length} bytes at ${offset}`);
      return false;
    }
    return true;
  }
  read(offset: number, length: number, done: BlockReadCallback): void {
    this.reads++;
    const ok = this.check('read', offset, length);
    this.pending.push(() => {
      if (!ok || this.failReads) done(new Error('injected read error'), null);
      else done(null, this.bytes.slice(offset, offset + length));
    });
  }
  write(offset: number, data: Uint8Array, done: BlockDoneCallback): void {
    this.writes++;
    const ok = this.check('write', offset, data.length) && !this.readOnly;
    if (this.readOnly) this.violations.push('write to a read-only backend');
    const copy = data.slice();
    this.pending.push(() => {
      if (!ok || this.failWrites) {
        done(new Error('injected write error'));
        return;
      }
      this.bytes.set(copy, offset);
      done(null);
    });
  }
  flush(done: BlockDoneCallback): void {
    this.flushes++;
    this.pending.push(() => done(this.failFlush ? new Error('injected flush error') : null));
  }
  close(): void {
    this.closed = true;
  }
  /** Runs one waiting completion (index chosen by the caller); false if none waits. */
  runOne(index = 0): boolean {
    if (this.pending.length === 0) return false;
    const [fn] = this.pending.splice(index % this.pending.length, 1);
    fn();
    return true;
  }
  runAll(): void {
    while (this.runOne()) { /* completions may queue more */ }
  }
}
