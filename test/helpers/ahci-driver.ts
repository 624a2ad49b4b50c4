// A small AHCI driver for host-side tests: it programs a port's command list and FIS area in a
// guest memory of its own, builds command tables (H2D FIS, ATAPI command, PRD table) and
// issues them through ABAR as a guest driver would, or writes whatever a test likes there.
import type { BlockBackend, BlockDoneCallback, BlockReadCallback } from '../../main/vmm/devices/usb/storage/block-backend';
import { PCI_CFG, PCI_COMMAND } from '../../main/vmm/devices/pci/pci-device';
import { type AhciHba, HBA_REG, PORT_BASE, PORT_REG, PORT_STRIDE, PXCMD } from '../../main/vmm/devices/ahci/hba';
import { TestBus } from './virtio-driver';

export { RAM_BYTES } from './virtio-driver';

/** Per port: command list, FIS area, 32 command tables of 0x1000 bytes each, then data. */
export const portLayout = (port: number) => {
  const base = 0x100000 + port * 0x40000;
  return { clb: base, fb: base + 0x400, tables: base + 0x1000, data: 0x800000 + port * 0x100000 };
};

export interface Command {
  fis: number[] | Uint8Array;
  cdb?: number[];
  write?: boolean;
  /** PRD entries; default: one covering `bytes` at the port's data area. */
  prds?: { address: number; length: number; high?: number }[];
  bytes?: number;
  slot?: number;
  cfl?: number;
}

export class AhciTestDriver {
  readonly bus = new TestBus();

  constructor(readonly hba: AhciHba) {
    hba.bus = this.bus;
    hba.writeConfig(PCI_CFG.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
  }

  hostRead(reg: number): number {
    return this.hba.abar.read(reg, 4);
  }
  hostWrite(reg: number, value: number): void {
    this.hba.abar.write(reg, 4, value >>> 0);
  }
  portRead(port: number, reg: number): number {
    return this.hba.abar.read(PORT_BASE + port * PORT_STRIDE + reg, 4);
  }
  portWrite(port: number, reg: number, value: number): void {
    this.hba.abar.write(PORT_BASE + port * PORT_STRIDE + reg, 4, value >>> 0);
  }

  /** Linux's order: stop, program CLB/FB, FIS receive on, start; clears PxIS. */
  startPort(port: number): void {
    const l = portLayout(port);
    this.portWrite(port, PORT_REG.CMD, this.portRead(port, PORT_REG.CMD) & ~(PXCMD.ST | PXCMD.FRE));
    this.portWrite(port, PORT_REG.CLB, l.clb);
    this.portWrite(port, PORT_REG.CLBU, 0);
    this.portWrite(port, PORT_REG.FB, l.fb);
    this.portWrite(port, PORT_REG.FBU, 0);
    this.portWrite(port, PORT_REG.CMD, this.portRead(port, PORT_REG.CMD) | PXCMD.FRE);
    this.portWrite(port, PORT_REG.CMD, this.portRead(port, PORT_REG.CMD) | PXCMD.ST);
    this.portWrite(port, PORT_REG.IS, 0xffffffff);
  }

  /** Writes the command header and table of `cmd` (slot 0 by default); does not issue it. */
  prepare(port: number, cmd: Command): number {
    const slot = cmd.slot ?? 0;
    const l = portLayout(port);
    const table = l.tables + slot * 0x1000;
    const view = this.bus.view;
    this.bus.ram.fill(0, table, table + 0x80);
    this.bus.ram.set(cmd.fis, table);
    if (cmd.cdb) this.bus.ram.set(cmd.cdb, table + 0x40);
    const prds = cmd.prds ?? (cmd.bytes ? [{ address: l.data + slot * 0x8000, length: cmd.bytes }] : []);
    prds.forEach((p, i) => {
      view.setUint32(table + 0x80 + i * 16, p.address, true);
      view.setUint32(table + 0x80 + i * 16 + 4, p.high ?? 0, true);
      view.setUint32(table + 0x80 + i * 16 + 12, (p.length - 1) & 0x3fffff, true);
    });
    const flags = (cmd.cfl ?? 5) | (cmd.cdb ? 0x20 : 0) | (cmd.write ? 0x40 : 0) | (prds.length << 16);
    const header = l.clb + slot * 32;
    view.setUint32(header, flags >>> 0, true);
    view.setUint32(header + 4, 0, true);
    view.setUint32(header + 8, table, true);
    view.setUint32(header + 12, 0, true);
    return slot;
  }

  /** Prepares and issues one command, returns PxIS (then clears it). */
  run(port: number, cmd: Command): number {
    const slot = this.prepare(port, cmd);
    this.portWrite(port, PORT_REG.CI, 1 << slot);
    const is = this.portRead(port, PORT_REG.IS);
    this.portWrite(port, PORT_REG.IS, is);
    return is;
  }

  /** The received D2H Register FIS. */
  d2h(port: number): Uint8Array {
    const fb = portLayout(port).fb;
    return this.bus.ram.slice(fb + 0x40, fb + 0x54);
  }
  pioSetup(port: number): Uint8Array {
    const fb = portLayout(port).fb;
    return this.bus.ram.slice(fb + 0x20, fb + 0x34);
  }
  data(port: number, length: number, slot = 0): Uint8Array {
    const at = portLayout(port).data + slot * 0x8000;
    return this.bus.ram.slice(at, at + length);
  }
  prdbc(port: number, slot = 0): number {
    return this.bus.view.getUint32(portLayout(port).clb + slot * 32 + 4, true);
  }

  /** SeaBIOS's recovery after an error: stop (PxCI clears), clear PxSERR and PxIS, start. */
  recover(port: number): void {
    this.portWrite(port, PORT_REG.CMD, this.portRead(port, PORT_REG.CMD) & ~PXCMD.ST);
    this.portWrite(port, PORT_REG.SERR, this.portRead(port, PORT_REG.SERR));
    this.portWrite(port, PORT_REG.IS, this.portRead(port, PORT_REG.IS));
    this.portWrite(port, PORT_REG.CMD, this.portRead(port, PORT_REG.CMD) | PXCMD.ST);
  }

  enableInterrupts(port: number, mask = 0xffffffff): void {
    this.hostWrite(HBA_REG.GHC, this.hostRead(HBA_REG.GHC) | 2);
    this.portWrite(port, PORT_REG.IE, mask);
  }
}

/** A 48-bit LBA H2D command FIS. */
export function h2d(command: number, lba = 0, count = 0, features = 0, device = 0x40): number[] {
  return [0x27, 0x80, command, features & 0xff, lba & 0xff, (lba >>> 8) & 0xff, (lba >>> 16) & 0xff, device,
    Math.floor(lba / 0x1000000) & 0xff, Math.floor(lba / 0x100000000) & 0xff, Math.floor(lba / 0x10000000000) & 0xff, (features >> 8) & 0xff, count & 0xff, (count >> 8) & 0xff, 0, 0, 0, 0, 0, 0];
}

/** An image in memory that records any request outside it; completes at once. */
export class MemoryDisk implements BlockBackend {
  readonly bytes: Uint8Array;
  readonly violations: string[] = [];
  flushes = 0;
  closed = false;
  /** Vectored transfers straight to or from guest memory (as a synchronous RawImageFile has), when made `vectored`. */
  readonly readvNow?: (offset: number, targets: readonly Uint8Array[]) => Error | null;
  readonly writevNow?: (offset: number, sources: readonly Uint8Array[]) => Error | null;
  /** Transfers that went through readvNow/writevNow. */
  vectoredTransfers = 0;
  constructor(readonly size: number, readonly readOnly = false, fill: (i: number) => number = (i) => (i * 7 + (i >> 9)) & 0xff, vectored = false) {
    this.bytes = new Uint8Array(size);
    for (let i = 0; i < size; i++) this.bytes[i] = fill(i);
    if (!vectored) return;
    const vector = (offset: number, buffers: readonly Uint8Array[], write: boolean): Error | null => {
      const length = buffers.reduce((n, b) => n + b.length, 0);
      if (this.outside(offset, length)) return new RangeError('outside');
      if (write && this.readOnly) this.violations.push('write to a read-only image');
      this.vectoredTransfers++;
      for (const b of buffers) {
        if (write) this.bytes.set(b, offset);
        else b.set(this.bytes.subarray(offset, offset + b.length));
        offset += b.length;
      }
      return null;
    };
    this.readvNow = (offset, targets) => vector(offset, targets, false);
    this.writevNow = (offset, sources) => vector(offset, sources, true);
  }
  private outside(offset: number, length: number): boolean {
    const bad = !Number.isSafeInteger(offset) || offset < 0 || length < 0 || offset + length > this.size;
    if (bad) this.violations.push(`${length} bytes at ${offset}`);
    return bad;
  }
  read(offset: number, length: number, done: BlockReadCallback): void {
    if (this.outside(offset, length)) return done(new RangeError('outside'), null);
    done(null, this.bytes.slice(offset, offset + length));
  }
  write(offset: number, data: Uint8Array, done: BlockDoneCallback): void {
    if (this.readOnly) this.violations.push('write to a read-only image');
    if (this.outside(offset, data.length)) return done(new RangeError('outside'));
    this.bytes.set(data, offset);
    done(null);
  }
  flush(done: BlockDoneCallback): void {
    this.flushes++;
    done(null);
  }
  close(): void {
    this.closed = true;
  }
}
