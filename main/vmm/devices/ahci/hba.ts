// An AHCI 1.0 host bus adapter (Serial ATA AHCI 1.3.1 spec) as a PCI function with the IDs of
// Intel's ICH9 controller (8086:2922, class 01/06/01), so SeaBIOS and Linux's ahci drive it
// without quirks. BAR 5 (ABAR, 4 KiB of MMIO) holds the generic host control registers and
// six ports; a SataDrive (ATA disk, ATAPI CD-ROM) sits on a port or it is empty.
//
// A command is taken when the guest sets its PxCI bit with PxCMD.ST on: the command header
// (PxCLB + 32 * slot), the command table (command FIS, ATAPI command, PRD table) and every
// buffer are read and written through the function's DMA accessor, so nothing reaches host
// memory outside guest RAM and nothing moves while bus mastering is off. Results go to the
// received-FIS area (PxFB) as PIO Setup, D2H Register and Set Device Bits FISes, and to
// PxTFD / PxIS. Completions may come later (asynchronous backends); a port reset drops them.
//
// What a guest can get wrong, and what it gets (AHCI 6.1): a command table, header, PRD or
// FIS area that is not guest memory is a host bus fatal error (PxIS.HBFS); a command FIS of
// the wrong type or length is an interface fatal error (PxIS.IFS); a command the device
// refuses is a task file error (PxIS.TFES, PxTFD.STS.ERR). All three stop the port, with
// the slot left in PxCI and PxCMD.CCS pointing at it, until software clears PxCMD.ST.
//
// Interrupts: a port's PxIS & PxIE sets its bit in IS; with GHC.IE set that raises MSI (one
// vector) when the guest enabled it, else INTx A (level).
import type { DmaSegment } from '../../memory/dma';
import { DMA_OK } from '../../memory/dma';
import type { IoDevice } from '../io-device';
import type { MsiRouter } from '../interrupts';
import { MsiCapability, PciDevice } from '../pci/pci-device';
import { ATA_CMD, ATA_STATUS, type AtaOutcome, type AtaTaskFile, type AtaTransfer, type SataDrive } from './ata';

export const AHCI_VENDOR = 0x8086;
export const AHCI_DEVICE = 0x2922;
export const AHCI_CLASS = 0x010601;
export const AHCI_ABAR = 5;
export const AHCI_ABAR_SIZE = 0x1000;
export const AHCI_PORTS = 6;
export const AHCI_SLOTS = 32;

export const HBA_REG = { CAP: 0x00, GHC: 0x04, IS: 0x08, PI: 0x0c, VS: 0x10, CCC_CTL: 0x14, CCC_PORTS: 0x18, EM_LOC: 0x1c, EM_CTL: 0x20, CAP2: 0x24, BOHC: 0x28 } as const;
export const PORT_REG = {
  CLB: 0x00, CLBU: 0x04, FB: 0x08, FBU: 0x0c, IS: 0x10, IE: 0x14, CMD: 0x18, TFD: 0x20, SIG: 0x24, SSTS: 0x28, SCTL: 0x2c,
  SERR: 0x30, SACT: 0x34, CI: 0x38, SNTF: 0x3c, FBS: 0x40,
} as const;
export const PORT_BASE = 0x100;
export const PORT_STRIDE = 0x80;

export const GHC = { HR: 1 << 0, IE: 1 << 1, AE: 1 << 31 } as const;
export const PXCMD = { ST: 1 << 0, SUD: 1 << 1, POD: 1 << 2, CLO: 1 << 3, FRE: 1 << 4, FR: 1 << 14, CR: 1 << 15, ATAPI: 1 << 24 } as const;
export const PXIS = {
  DHRS: 1 << 0, PSS: 1 << 1, DSS: 1 << 2, SDBS: 1 << 3, UFS: 1 << 4, DPS: 1 << 5, PCS: 1 << 6, IFS: 1 << 27, HBDS: 1 << 28,
  HBFS: 1 << 29, TFES: 1 << 30,
} as const;
/** PxIS bits that stop the port. */
const FATAL = PXIS.IFS | PXIS.HBDS | PXIS.HBFS | PXIS.TFES;
const PXIS_VALID = 0xfdc000ff;
const PXCMD_WRITABLE = (PXCMD.ST | PXCMD.SUD | PXCMD.POD | PXCMD.CLO | PXCMD.FRE | PXCMD.ATAPI | (1 << 25) | (1 << 26) | (1 << 27) | 0xf0000000) >>> 0;

/** CAP: 64-bit addressing, NCQ, AHCI only, Gen1 (1.5 Gb/s), 32 slots, 6 ports. */
const CAP = ((1 << 31) | (1 << 30) | (1 << 18) | (1 << 20) | ((AHCI_SLOTS - 1) << 8) | (AHCI_PORTS - 1)) >>> 0;
const VERSION_1_0 = 0x00010000;

/** Received-FIS area offsets (AHCI 4.2.1). */
const FIS_PSFIS = 0x20;
const FIS_RFIS = 0x40;
const FIS_SDBFIS = 0x58;
const FIS_TYPE_H2D = 0x27;
const TWO_32 = 0x100000000;
/** Addresses above x86's 52 physical address bits reach no memory. */
const MAX_HIGH = 0xfffff;

export interface AhciCounters {
  commands: { add(n?: number): void };
  errors: { add(n?: number): void };
}

export interface AhciOptions {
  router?: MsiRouter | null;
  log?: (text: string) => void;
  counters?: AhciCounters | null;
}

function address(low: number, high: number): number {
  return high > MAX_HIGH ? -1 : high * TWO_32 + low;
}

/** The first `length` bytes of a scatter-gather list. */
function firstBytes(segments: readonly DmaSegment[], length: number): DmaSegment[] {
  const out: DmaSegment[] = [];
  let left = length;
  for (const s of segments) {
    if (left <= 0) break;
    const n = Math.min(left, s.length);
    out.push({ address: s.address, length: n });
    left -= n;
  }
  return out;
}

export class AhciPort {
  clbLow = 0; clbHigh = 0; fbLow = 0; fbHigh = 0;
  is = 0; ie = 0; cmd = 0; tfd = 0x7f; sig = 0xffffffff; ssts = 0; sctl = 0; serr = 0; sact = 0; ci = 0; sntf = 0;
  /** A fatal error stopped command processing until PxCMD.ST is cleared. */
  halted = false;
  /** Bumped by every port reset and stop: late completions of older commands are dropped. */
  generation = 0;
  /** Slots whose command is with the device. */
  busy = 0;
  private signaturePending = false;

  constructor(readonly hba: AhciHba, readonly index: number, public drive: SataDrive | null) {
    this.reset();
  }

  /** The port's state after an HBA reset or power-on: the device presents its signature. */
  reset(): void {
    this.generation++;
    this.clbLow = 0; this.clbHigh = 0; this.fbLow = 0; this.fbHigh = 0;
    this.is = 0; this.ie = 0; this.cmd = this.drive ? PXCMD.SUD | PXCMD.POD : 0; this.sctl = 0; this.serr = 0; this.sact = 0;
    this.ci = 0; this.sntf = 0; this.busy = 0; this.halted = false;
    this.linkUp();
  }

  private linkUp(): void {
    if (!this.drive) {
      this.ssts = 0;
      this.tfd = 0x7f;
      this.sig = 0xffffffff;
      this.signaturePending = false;
      return;
    }
    this.drive.reset();
    this.ssts = 0x113; // device present, Gen1, active
    this.tfd = 0x0100 | this.drive.resetStatus;
    this.sig = this.drive.signature >>> 0;
    this.signaturePending = true;
    if (this.cmd & PXCMD.FRE) this.postSignature();
  }

  private postSignature(): void {
    if (!this.drive || !this.signaturePending) return;
    this.signaturePending = false;
    const sig = this.drive.signature >>> 0;
    this.postD2h({ status: this.drive.resetStatus, error: 1, count: sig & 0xff, lba: sig >>> 8 }, false);
  }

  read(reg: number): number {
    switch (reg) {
      case PORT_REG.CLB: return this.clbLow;
      case PORT_REG.CLBU: return this.clbHigh;
      case PORT_REG.FB: return this.fbLow;
      case PORT_REG.FBU: return this.fbHigh;
      case PORT_REG.IS: return this.is >>> 0;
      case PORT_REG.IE: return this.ie >>> 0;
      case PORT_REG.CMD: {
        let v = this.cmd & ~(PXCMD.FR | PXCMD.CR | 0x1f00);
        if (this.cmd & PXCMD.FRE) v |= PXCMD.FR;
        if (this.cmd & PXCMD.ST) v |= PXCMD.CR | (this.currentSlot << 8);
        return v >>> 0;
      }
      case PORT_REG.TFD: return this.tfd;
      case PORT_REG.SIG: return this.sig >>> 0;
      case PORT_REG.SSTS: return this.ssts;
      case PORT_REG.SCTL: return this.sctl;
      case PORT_REG.SERR: return this.serr >>> 0;
      case PORT_REG.SACT: return this.sact >>> 0;
      case PORT_REG.CI: return this.ci >>> 0;
      case PORT_REG.SNTF: return this.sntf;
      default: return 0;
    }
  }

  private currentSlot = 0;

  write(reg: number, value: number): void {
    switch (reg) {
      case PORT_REG.CLB: if (!(this.cmd & PXCMD.ST)) this.clbLow = value & ~0x3ff; break;
      case PORT_REG.CLBU: if (!(this.cmd & PXCMD.ST)) this.clbHigh = value; break;
      case PORT_REG.FB: if (!(this.cmd & PXCMD.FRE)) this.fbLow = value & ~0xff; break;
      case PORT_REG.FBU: if (!(this.cmd & PXCMD.FRE)) this.fbHigh = value; break;
      case PORT_REG.IS: this.is = (this.is & ~value) >>> 0; this.hba.updateInterrupt(); break;
      case PORT_REG.IE: this.ie = (value & PXIS_VALID) >>> 0; this.hba.updateInterrupt(true); break;
      case PORT_REG.CMD: this.writeCmd(value); break;
      case PORT_REG.SCTL: this.writeSctl(value & 0xfff); break;
      case PORT_REG.SERR: this.serr = (this.serr & ~value) >>> 0; break;
      case PORT_REG.SACT: if (this.cmd & PXCMD.ST) this.sact = (this.sact | value) >>> 0; break;
      case PORT_REG.CI: this.issue(value >>> 0); break;
      case PORT_REG.SNTF: this.sntf &= ~value; break;
      default: break;
    }
  }

  private writeCmd(value: number): void {
    const old = this.cmd;
    let next = ((old & ~PXCMD_WRITABLE) | (value & PXCMD_WRITABLE)) >>> 0;
    if (next & PXCMD.CLO) {
      // Command list override: BSY and DRQ go, the bit clears itself.
      this.tfd &= ~(ATA_STATUS.BSY | ATA_STATUS.DRQ);
      next &= ~PXCMD.CLO;
    }
    next &= 0x0fffffff; // ICC reads 0
    this.cmd = next >>> 0;
    if ((old & PXCMD.ST) && !(next & PXCMD.ST)) {
      // Stopping the list: every command is dropped (AHCI 10.3.2).
      this.ci = 0;
      this.sact = 0;
      this.busy = 0;
      this.halted = false;
      this.currentSlot = 0;
      this.generation++;
    }
    if (!(old & PXCMD.FRE) && (next & PXCMD.FRE)) this.postSignature();
  }

  private writeSctl(value: number): void {
    const oldDet = this.sctl & 0xf;
    this.sctl = value;
    const det = value & 0xf;
    if (det === 1) {
      // COMRESET: the link goes down while DET is 1.
      this.ssts = this.drive ? 0x001 : 0;
      this.tfd = 0x80;
      this.generation++;
      this.busy = 0;
    } else if (oldDet === 1 && det === 0) {
      this.linkUp();
    }
  }

  /** Slots the guest set in PxCI. */
  private issue(value: number): void {
    if (!(this.cmd & PXCMD.ST)) return;
    const fresh = (value & ~this.ci) >>> 0;
    this.ci = (this.ci | value) >>> 0;
    if (fresh === 0) return;
    this.run();
  }

  /** Runs issued slots that are not with the device yet, lowest first, until one fails. */
  private run(): void {
    for (let slot = 0; slot < AHCI_SLOTS; slot++) {
      const bit = (1 << slot) >>> 0;
      if (this.halted || !(this.cmd & PXCMD.ST)) return;
      if (!(this.ci & bit) || (this.busy & bit)) continue;
      this.busy = (this.busy | bit) >>> 0;
      this.currentSlot = slot;
      this.runSlot(slot, bit);
    }
  }

  private runSlot(slot: number, bit: number): void {
    const dma = this.hba.dma;
    this.hba.counters?.commands.add();
    const clb = address(this.clbLow, this.clbHigh);
    const header = new Uint8Array(16);
    if (clb < 0 || dma.read(clb + slot * 32, header) !== DMA_OK) return this.fatal(slot, PXIS.HBFS, 'command header outside guest memory');
    const h = new DataView(header.buffer);
    const flags = h.getUint32(0, true);
    const cfl = flags & 0x1f;
    const atapi = (flags & 0x20) !== 0;
    const prdtl = flags >>> 16;
    const ctba = address(h.getUint32(8, true) & ~0x7f, h.getUint32(12, true));
    const headerAt = clb + slot * 32;
    if (cfl < 5 || cfl > 16) return this.fatal(slot, PXIS.IFS, `command FIS length ${cfl} dwords`);
    const table = new Uint8Array(0x80);
    if (ctba < 0 || dma.read(ctba, table) !== DMA_OK) return this.fatal(slot, PXIS.HBFS, 'command table outside guest memory');
    if (table[0] !== FIS_TYPE_H2D) return this.fatal(slot, PXIS.IFS, `command FIS type 0x${table[0].toString(16)}`);
    if (!(table[1] & 0x80)) {
      // A device control update (software reset): SRST set resets, SRST cleared shows the signature.
      this.complete(slot, bit, 0, headerAt);
      if (!(table[15] & 0x04)) {
        this.signaturePending = true;
        this.drive?.reset();
        if (this.drive) this.tfd = 0x0100 | this.drive.resetStatus;
        if (this.cmd & PXCMD.FRE) this.postSignature();
      }
      return;
    }
    const tf: AtaTaskFile = {
      command: table[2],
      features: table[3] | (table[11] << 8),
      lba: table[4] + table[5] * 0x100 + table[6] * 0x10000 + table[8] * 0x1000000 + table[9] * TWO_32 + table[10] * TWO_32 * 0x100,
      device: table[7],
      count: table[12] | (table[13] << 8),
    };
    const cdb = atapi ? table.slice(0x40, 0x50) : new Uint8Array(16);
    // The PRD table: 16 bytes an entry, at most 65535 of them.
    const segments: DmaSegment[] = [];
    let capacity = 0;
    if (prdtl > 0) {
      const prdt = new Uint8Array(prdtl * 16);
      if (dma.read(ctba + 0x80, prdt) !== DMA_OK) return this.fatal(slot, PXIS.HBFS, 'PRD table outside guest memory');
      const p = new DataView(prdt.buffer);
      for (let i = 0; i < prdtl; i++) {
        const at = address(p.getUint32(i * 16, true) & ~1, p.getUint32(i * 16 + 4, true));
        const length = (p.getUint32(i * 16 + 12, true) & 0x3fffff) + 1;
        if (at < 0) return this.fatal(slot, PXIS.HBFS, `PRD ${i} past 2^52`);
        segments.push({ address: at, length });
        capacity += length;
      }
    }
    const transfer: AtaTransfer = {
      capacity,
      toGuest: (data) => data.length <= capacity && dma.scatter(firstBytes(segments, data.length), data) === data.length,
      fromGuest: (length) => {
        if (length > capacity) return null;
        const out = new Uint8Array(length);
        return dma.gather(firstBytes(segments, length), out) === length ? out : null;
      },
      guestViews: (length, intoGuest) => (length <= capacity ? dma.views(firstBytes(segments, length), intoGuest) : null),
    };
    const drive = this.drive;
    if (!drive) return this.fatal(slot, PXIS.TFES, 'no device');
    const ncq = tf.command === ATA_CMD.READ_FPDMA_QUEUED || tf.command === ATA_CMD.WRITE_FPDMA_QUEUED;
    const generation = this.generation;
    if (ncq) {
      // The device accepts the command at once (PxCI clears); PxSACT clears with the SDB FIS.
      const tag = (tf.count >> 3) & 0x1f;
      if (drive.kind !== 'disk' || !(this.sact & (1 << tag))) return this.fatal(slot, PXIS.TFES, 'NCQ command without its PxSACT bit');
      this.complete(slot, bit, 0, -1);
      drive.execute(tf, cdb, transfer, (outcome) => {
        if (generation !== this.generation) return;
        this.ncqDone(slot, tag, outcome);
      });
      return;
    }
    drive.execute(tf, cdb, transfer, (outcome) => {
      if (generation !== this.generation) return;
      this.done(slot, bit, headerAt, outcome);
    });
  }

  private done(slot: number, bit: number, headerAt: number, outcome: AtaOutcome): void {
    if (outcome.busError) return this.fatal(slot, PXIS.HBFS, 'a data buffer is outside guest memory');
    const failed = (outcome.status & ATA_STATUS.ERR) !== 0;
    if (outcome.pioIn && !failed) this.postPioSetup(outcome);
    this.tfd = (outcome.error << 8) | outcome.status;
    if (failed) {
      this.postD2h(outcome, true);
      this.hba.counters?.errors.add();
      this.currentSlot = slot;
      this.halted = true;
      this.busy &= ~bit;
      this.raise(PXIS.TFES);
      return;
    }
    this.complete(slot, bit, outcome.transferred ?? 0, headerAt);
    this.postD2h(outcome, true);
  }

  private ncqDone(_slot: number, tag: number, outcome: AtaOutcome): void {
    if (outcome.busError) return this.fatal(tag, PXIS.HBFS, 'a data buffer is outside guest memory');
    this.tfd = (outcome.error << 8) | outcome.status;
    if (outcome.status & ATA_STATUS.ERR) {
      this.postD2h(outcome, true);
      this.hba.counters?.errors.add();
      this.halted = true;
      this.raise(PXIS.TFES);
      return;
    }
    const bit = (1 << tag) >>> 0;
    this.sact = (this.sact & ~bit) >>> 0;
    const fb = address(this.fbLow, this.fbHigh);
    if (this.cmd & PXCMD.FRE) {
      const fis = new Uint8Array(8);
      fis[0] = 0xa1;
      fis[1] = 0x40; // interrupt
      fis[2] = outcome.status & 0x77;
      fis[3] = outcome.error;
      new DataView(fis.buffer).setUint32(4, bit, true);
      if (fb < 0 || this.hba.dma.write(fb + FIS_SDBFIS, fis) !== DMA_OK) return this.fatal(tag, PXIS.HBFS, 'FIS area outside guest memory');
    }
    this.raise(PXIS.SDBS);
  }

  /** The slot is done with: PxCI clears and PRDBC says what moved (headerAt < 0: NCQ, no PRDBC). */
  private complete(slot: number, bit: number, transferred: number, headerAt: number): void {
    this.ci = (this.ci & ~bit) >>> 0;
    this.busy = (this.busy & ~bit) >>> 0;
    if (headerAt >= 0) this.hba.dma.writeU32(headerAt + 4, transferred >>> 0);
    if (this.currentSlot === slot) this.currentSlot = 0;
  }

  private postPioSetup(outcome: AtaOutcome): void {
    if (!(this.cmd & PXCMD.FRE)) return;
    const fis = new Uint8Array(20);
    fis[0] = 0x5f;
    fis[1] = 0x20 | 0x40; // device to host, interrupt
    fis[2] = outcome.status;
    fis[3] = outcome.error;
    fis[12] = (outcome.count ?? 0) & 0xff;
    fis[15] = outcome.status;
    new DataView(fis.buffer).setUint16(16, Math.min(outcome.transferred ?? 0, 0xffff), true);
    this.writeFis(FIS_PSFIS, fis, PXIS.PSS);
  }

  private postD2h(outcome: AtaOutcome, interrupt: boolean): void {
    this.tfd = ((outcome.error & 0xff) << 8) | (outcome.status & 0xff);
    if (!(this.cmd & PXCMD.FRE)) {
      if (interrupt) this.raise(PXIS.DHRS);
      return;
    }
    const fis = new Uint8Array(20);
    const lba = outcome.lba ?? 0;
    fis[0] = 0x34;
    fis[1] = interrupt ? 0x40 : 0;
    fis[2] = outcome.status;
    fis[3] = outcome.error;
    fis[4] = lba & 0xff;
    fis[5] = (lba >>> 8) & 0xff;
    fis[6] = (lba >>> 16) & 0xff;
    fis[12] = (outcome.count ?? 0) & 0xff;
    fis[13] = ((outcome.count ?? 0) >>> 8) & 0xff;
    this.writeFis(FIS_RFIS, fis, PXIS.DHRS);
  }

  private writeFis(offset: number, fis: Uint8Array, bit: number): void {
    const fb = address(this.fbLow, this.fbHigh);
    if (fb < 0 || this.hba.dma.write(fb + offset, fis) !== DMA_OK) {
      this.fatal(this.currentSlot, PXIS.HBFS, 'FIS area outside guest memory');
      return;
    }
    this.raise(bit);
  }

  private fatal(slot: number, bits: number, why: string): void {
    this.hba.log(`ahci port ${this.index}: slot ${slot}: ${why}`);
    this.hba.counters?.errors.add();
    this.halted = true;
    this.currentSlot = slot;
    this.busy &= ~((1 << slot) >>> 0);
    if (bits !== PXIS.TFES) this.tfd = (this.tfd & ~0xff) | ATA_STATUS.ERR | (this.tfd & 0xff & ~ATA_STATUS.BSY);
    this.raise(bits);
  }

  raise(bits: number): void {
    this.is = (this.is | bits) >>> 0;
    if (bits & this.ie) this.hba.updateInterrupt(true);
  }

  get pendingInterrupt(): boolean {
    return (this.is & this.ie) !== 0;
  }

  get fatalPending(): boolean {
    return (this.is & FATAL) !== 0;
  }
}

export class AhciHba extends PciDevice {
  readonly ports: AhciPort[];
  readonly msi: MsiCapability;
  readonly abar: IoDevice;
  private ghc = GHC.AE;
  private intxLevel = false;
  readonly counters: AhciCounters | null;
  readonly log: (text: string) => void;

  constructor(name: string, drives: readonly (SataDrive | null)[], options: AhciOptions = {}) {
    super(name, {
      vendorId: AHCI_VENDOR, deviceId: AHCI_DEVICE, classCode: AHCI_CLASS, revision: 2,
      subsystemVendorId: 0x1af4, subsystemId: 0x1100, interruptPin: 1,
    });
    if (drives.length > AHCI_PORTS) throw new Error(`${name}: at most ${AHCI_PORTS} SATA devices (${drives.length} given)`);
    this.log = options.log ?? (() => {});
    this.counters = options.counters ?? null;
    this.abar = {
      name,
      read: (offset, size) => this.readAbar(offset, size),
      write: (offset, size, value) => this.writeAbar(offset, size, value >>> 0),
    };
    this.defineBar(AHCI_ABAR, { kind: 'mem32', size: AHCI_ABAR_SIZE, mmio: this.abar });
    this.msi = new MsiCapability(this, 1, options.router ?? null);
    this.ports = Array.from({ length: AHCI_PORTS }, (_, i) => new AhciPort(this, i, drives[i] ?? null));
  }

  readAbar(offset: number, size: number): number {
    const dword = this.readRegister(offset & ~3);
    if (size === 4 && (offset & 3) === 0) return dword;
    const shift = 8 * (offset & 3);
    if (shift + 8 * size > 32) return 0;
    return (dword >>> shift) & (2 ** (8 * size) - 1);
  }

  writeAbar(offset: number, size: number, value: number): void {
    // The registers are dwords; drivers write them whole.
    if (size !== 4 || (offset & 3) !== 0) return;
    if (offset < PORT_BASE) {
      this.writeHost(offset, value);
      return;
    }
    const port = this.ports[Math.floor((offset - PORT_BASE) / PORT_STRIDE)];
    if (port) port.write((offset - PORT_BASE) % PORT_STRIDE, value);
  }

  private readRegister(offset: number): number {
    if (offset < PORT_BASE) {
      switch (offset) {
        case HBA_REG.CAP: return CAP;
        case HBA_REG.GHC: return this.ghc >>> 0;
        case HBA_REG.IS: return this.interruptStatus();
        case HBA_REG.PI: return (1 << AHCI_PORTS) - 1;
        case HBA_REG.VS: return VERSION_1_0;
        default: return 0;
      }
    }
    const port = this.ports[Math.floor((offset - PORT_BASE) / PORT_STRIDE)];
    return port ? port.read((offset - PORT_BASE) % PORT_STRIDE) : 0;
  }

  private writeHost(offset: number, value: number): void {
    if (offset === HBA_REG.GHC) {
      if (value & GHC.HR) {
        this.hbaReset();
        return;
      }
      this.ghc = (GHC.AE | (value & GHC.IE)) >>> 0;
      this.updateInterrupt();
    }
    // IS follows the ports' PxIS & PxIE (writes to it change nothing that stays set).
  }

  /** GHC.HR: every port and the global registers go back to their reset values. */
  hbaReset(): void {
    this.ghc = GHC.AE;
    for (const p of this.ports) p.reset();
    this.updateInterrupt();
  }

  interruptStatus(): number {
    let v = 0;
    this.ports.forEach((p, i) => { if (p.pendingInterrupt) v |= 1 << i; });
    return v >>> 0;
  }

  /** Re-evaluates the interrupt; `edge`: a port just gained an enabled bit (an MSI goes out). */
  updateInterrupt(edge = false): void {
    const level = (this.ghc & GHC.IE) !== 0 && this.interruptStatus() !== 0;
    if (this.msi.enabled) {
      if (this.intxLevel) this.setIntx(this.intxLevel = false);
      if (level && edge) this.msi.signal(0);
      return;
    }
    if (level !== this.intxLevel) {
      this.intxLevel = level;
      this.setIntx(level);
    }
  }

  /** Machine reset (the PCI function is rebuilt with the machine; this is for tests). */
  close(): void {
    for (const p of this.ports) p.drive?.close();
  }
}
