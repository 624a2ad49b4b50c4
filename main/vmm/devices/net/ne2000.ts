// An NE2000 PCI card (Realtek RTL8029, 10ec:8029): a DP8390 core behind a 32-byte I/O BAR, with
// 16 KiB of card memory at 0x4000-0x7fff that the guest reaches only through the remote DMA
// data port, and the station address PROM at 0x00-0x1f (each byte doubled, "WW" at words 14
// and 15, as Linux's ne2k-pci reads it in word mode). Facts from the DP8390 datasheet; QEMU's
// hw/net/ne2000.c was read for what guests rely on.
//
// I/O BAR: 0x00-0x0f the DP8390 registers (page by CR.PS), 0x10-0x17 the data port (a byte or a
// word per access as DCR.WTS says, a 4-byte access moves 4 bytes), 0x18-0x1f the reset port
// (a read resets the core and sets ISR.RST).
//
// Every guest value is bounded: card addresses are 16-bit and only 0x4000-0x7fff is memory
// (other reads are 0xff, writes vanish), so a ring or remote DMA pointing anywhere reads or
// writes nothing outside the 16 KiB; receive writes byte by byte with the wrap at PSTOP, the
// header included (QEMU's CVE-2015-5279); a ring with PSTART >= PSTOP or CURR outside it
// receives nothing (CVE-2015-5278's loop cannot happen: no loop runs longer than one frame or
// one access); TBCR is checked before a frame is read.
//
// Receive: frames from the backend wait in the NicLink while the ring has no room (the
// backend is paused through the credit window, as the virtio-net model does); with
// `dropOnOverflow` the card behaves as the bare DP8390 instead: ISR.OVW, the missed-packet
// counter (CNTR2), the frame dropped and counted.
import { type DeviceContext } from '../device';
import { PciDevice } from '../pci/pci-device';
import type { IoDevice } from '../io-device';
import { NET_MIN_FRAME } from '../../shared/net-messages';
import type { NicLink } from './nic-link';
import { type NicCounters, nicCounters } from '../virtio/net';

export const NE2K_VENDOR_ID = 0x10ec;
export const NE2K_DEVICE_ID = 0x8029;
export const NE2K_IO_SIZE = 0x20;
export const NE2K_DATA_PORT = 0x10;
export const NE2K_RESET_PORT = 0x1f;
export const NE2K_RAM_START = 0x4000;
export const NE2K_RAM_BYTES = 0x4000;
export const NE2K_PROM_BYTES = 0x20;
/** The largest frame the card takes or sends: 1514 bytes and a VLAN tag (no FCS is kept). */
export const NE2K_MAX_FRAME = 1518;
/** Frames shorter than this are padded with zeros, as the sender's MAC pads them on a wire. */
export const NE2K_MIN_FRAME = 60;

export const CR = { STP: 0x01, STA: 0x02, TXP: 0x04, RD_READ: 0x08, RD_WRITE: 0x10, RD_SEND: 0x18, RD_ABORT: 0x20, RD_MASK: 0x38, PS_MASK: 0xc0 } as const;
export const ISR = { PRX: 0x01, PTX: 0x02, RXE: 0x04, TXE: 0x08, OVW: 0x10, CNT: 0x20, RDC: 0x40, RST: 0x80 } as const;
export const RCR = { SEP: 0x01, AR: 0x02, AB: 0x04, AM: 0x08, PRO: 0x10, MON: 0x20 } as const;
export const RSR = { PRX: 0x01, PHY: 0x20, DIS: 0x40 } as const;
export const TSR = { PTX: 0x01, ABT: 0x08 } as const;
export const DCR_WTS = 0x01;
/** TCR loopback bits (LB0, LB1): any mode but 0 keeps frames off the wire. */
export const TCR_LOOPBACK = 0x06;

/** Page 0 register offsets as the guest writes them (reads differ where noted in `readRegister`). */
export const P0 = {
  CR: 0x00, PSTART: 0x01, PSTOP: 0x02, BNRY: 0x03, TPSR: 0x04, TSR: 0x04, TBCR0: 0x05, TBCR1: 0x06, NCR: 0x05,
  ISR: 0x07, RSAR0: 0x08, RSAR1: 0x09, RBCR0: 0x0a, RBCR1: 0x0b, RCR: 0x0c, RSR: 0x0c, TCR: 0x0d, CNTR0: 0x0d,
  DCR: 0x0e, CNTR1: 0x0e, IMR: 0x0f, CNTR2: 0x0f, CRDA0: 0x08, CRDA1: 0x09, ID0: 0x0a, ID1: 0x0b,
} as const;
export const P1 = { PAR0: 0x01, CURR: 0x07, MAR0: 0x08 } as const;

export interface Ne2000Options {
  name: string;
  mac: Uint8Array;
  /** The backend's end; null: no backend (frames sent are counted and dropped, nothing arrives). */
  link: NicLink | null;
  statistics?: DeviceContext['statistics'] | null;
  log?: (text: string) => void;
  /** The bare DP8390's overflow (ISR.OVW, frame lost) instead of holding frames back. */
  dropOnOverflow?: boolean;
}

/** The Ethernet CRC-32 (most significant bit first) of `bytes`, as the DP8390's multicast hash uses it. */
export function ethernetCrcBe(bytes: Uint8Array, length = bytes.length): number {
  let crc = 0xffffffff | 0;
  for (let i = 0; i < length; i++) {
    let octet = bytes[i];
    for (let bit = 0; bit < 8; bit++, octet >>= 1) {
      const top = (crc >>> 31) ^ (octet & 1);
      crc = (crc << 1) ^ (top ? 0x04c11db7 : 0);
    }
  }
  return crc >>> 0;
}

/** The MAR bit (0..63) a multicast destination selects: the CRC's top six bits. */
export function multicastHashIndex(destination: Uint8Array): number {
  return ethernetCrcBe(destination, 6) >>> 26;
}

export class Ne2000Pci extends PciDevice {
  readonly link: NicLink | null;
  readonly counters: NicCounters | null;
  readonly prom = new Uint8Array(NE2K_PROM_BYTES);
  readonly ram = new Uint8Array(NE2K_RAM_BYTES);
  /** Drops by reason, also without a registry (tests read them). */
  readonly drops = { rxStopped: 0, rxBadRing: 0, rxOverflow: 0, rxFiltered: 0, rxTooLong: 0, rxMonitor: 0, txBadLength: 0, txNoLink: 0 };
  private readonly dropOnOverflow: boolean;
  private readonly logLine: (text: string) => void;
  private readonly io: IoDevice;

  // DP8390 registers.
  private cr = 0;
  private pstart = 0;
  private pstop = 0;
  private bnry = 0;
  private tpsr = 0;
  private tbcr = 0;
  private isr = 0;
  private imr = 0;
  private rsar = 0;
  private rbcr = 0;
  private rcr = 0;
  private tcr = 0;
  private dcr = 0;
  private tsr = 0;
  private rsr = 0;
  private curr = 0;
  private readonly par = new Uint8Array(6);
  private readonly mar = new Uint8Array(8);
  private readonly cntr = [0, 0, 0];
  /** The remote DMA is moving bytes (a read or write command with a count). */
  private dmaActive = false;
  private irqLevel = false;
  /** A transmit waits for the backend's credit. */
  private txPending = false;
  private readonly padded = new Uint8Array(NE2K_MIN_FRAME);
  private readonly txBuffer = new Uint8Array(NE2K_MAX_FRAME);

  constructor(options: Ne2000Options) {
    if (options.mac.length !== 6) throw new Error(`${options.name}: a MAC address has 6 bytes`);
    super(options.name, { vendorId: NE2K_VENDOR_ID, deviceId: NE2K_DEVICE_ID, classCode: 0x020000, interruptPin: 1 });
    this.link = options.link;
    this.dropOnOverflow = options.dropOnOverflow ?? false;
    this.logLine = options.log ?? (() => {});
    this.counters = options.statistics ? nicCounters(options.statistics, options.name) : null;
    for (let i = 0; i < 6; i++) this.prom[2 * i] = this.prom[2 * i + 1] = options.mac[i];
    // Words 14 and 15 read 0x57 ('W'): the NE2000 signature drivers look for.
    for (let i = 28; i < 32; i++) this.prom[i] = 0x57;
    this.io = {
      name: options.name,
      read: (offset, size) => this.ioRead(offset, size),
      write: (offset, size, value) => this.ioWrite(offset, size, value),
    };
    this.defineBar(0, { kind: 'io', size: NE2K_IO_SIZE, io: this.io });
    this.resetCore();
    if (this.link) {
      this.link.onReceive = () => this.receiveWaiting();
      this.link.onTransmitReady = () => { if (this.txPending) this.transmit(); };
    }
  }

  /** The I/O BAR's handler (tests drive it directly). */
  get ports(): IoDevice {
    return this.io;
  }

  /** The DP8390's state after the reset port: stopped, remote DMA aborted, ISR.RST. */
  private resetCore(): void {
    this.cr = CR.STP | CR.RD_ABORT;
    this.isr = ISR.RST;
    this.imr = 0;
    this.dmaActive = false;
    this.txPending = false;
    this.updateIrq();
  }

  // --- the I/O BAR ----------------------------------------------------------------------

  private ioRead(offset: number, size: number): number {
    if (offset >= NE2K_DATA_PORT && offset < NE2K_DATA_PORT + 8) return this.dataRead(size);
    if (offset >= 0x18) {
      this.reset();
      return 0;
    }
    let v = 0;
    for (let i = 0; i < size && offset + i < 0x10; i++) v |= this.readRegister(offset + i) << (8 * i);
    return v >>> 0;
  }

  private ioWrite(offset: number, size: number, value: number): void {
    if (offset >= NE2K_DATA_PORT && offset < NE2K_DATA_PORT + 8) {
      this.dataWrite(size, value);
      return;
    }
    if (offset >= 0x18) return; // the reset port resets on a read only
    for (let i = 0; i < size && offset + i < 0x10; i++) this.writeRegister(offset + i, (value >>> (8 * i)) & 0xff);
  }

  /** What a read of the reset port does. */
  reset(): void {
    this.resetCore();
  }

  private readRegister(reg: number): number {
    if (reg === P0.CR) return this.cr | (this.txPending ? CR.TXP : 0);
    const page = this.cr >> 6;
    if (page === 0) {
      switch (reg) {
        case 0x01: return 0; // CLDA0
        case 0x02: return 0; // CLDA1
        case 0x03: return this.bnry;
        case 0x04: return this.tsr;
        case 0x05: return 0; // NCR: no collisions
        case 0x06: return 0; // FIFO
        case 0x07: return this.isr;
        case 0x08: return this.rsar & 0xff; // CRDA0
        case 0x09: return this.rsar >> 8; // CRDA1
        case 0x0a: return 0x50; // RTL8029 ID 'P'
        case 0x0b: return 0x43; // RTL8029 ID 'C'
        case 0x0c: return this.rsr;
        default: { // CNTR0..2: cleared by the read
          const i = reg - 0x0d;
          const v = this.cntr[i];
          this.cntr[i] = 0;
          return v;
        }
      }
    }
    if (page === 1) {
      if (reg <= 6) return this.par[reg - 1];
      if (reg === P1.CURR) return this.curr;
      return this.mar[reg - P1.MAR0];
    }
    if (page === 2) {
      switch (reg) {
        case 0x01: return this.pstart;
        case 0x02: return this.pstop;
        case 0x03: return 0; // remote next packet pointer
        case 0x04: return this.tpsr;
        case 0x05: return 0; // local next packet pointer
        case 0x06: return this.curr; // address counter (upper)
        case 0x07: return 0; // address counter (lower)
        case 0x0c: return this.rcr | 0xc0;
        case 0x0d: return this.tcr | 0xe0;
        case 0x0e: return this.dcr | 0x80;
        case 0x0f: return this.imr | 0x80;
        default: return 0xff;
      }
    }
    // Page 3: the RTL8029's own registers; its ID stays readable there as well.
    if (reg === 0x0a) return 0x50;
    if (reg === 0x0b) return 0x43;
    return 0;
  }

  private writeRegister(reg: number, v: number): void {
    if (reg === P0.CR) {
      this.writeCommand(v);
      return;
    }
    const page = this.cr >> 6;
    if (page === 1) {
      if (reg <= 6) this.par[reg - 1] = v;
      else if (reg === P1.CURR) { this.curr = v; this.receiveWaiting(); }
      else this.mar[reg - P1.MAR0] = v;
      return;
    }
    if (page !== 0) return; // page 2's writable registers are for diagnostics; page 3's config is ignored
    switch (reg) {
      case P0.PSTART: this.pstart = v; this.receiveWaiting(); break;
      case P0.PSTOP: this.pstop = v; this.receiveWaiting(); break;
      case P0.BNRY: this.bnry = v; this.receiveWaiting(); break;
      case P0.TPSR: this.tpsr = v; break;
      case P0.TBCR0: this.tbcr = (this.tbcr & 0xff00) | v; break;
      case P0.TBCR1: this.tbcr = (this.tbcr & 0xff) | (v << 8); break;
      case P0.ISR: // RST is not cleared by a write
        this.isr &= ~(v & 0x7f);
        if (v & ISR.PRX) this.afterReceiveAck();
        this.updateIrq();
        break;
      case P0.RSAR0: this.rsar = (this.rsar & 0xff00) | v; break;
      case P0.RSAR1: this.rsar = (this.rsar & 0xff) | (v << 8); break;
      case P0.RBCR0: this.rbcr = (this.rbcr & 0xff00) | v; break;
      case P0.RBCR1: this.rbcr = (this.rbcr & 0xff) | (v << 8); break;
      case P0.RCR: this.rcr = v & 0x3f; break;
      case P0.TCR: this.tcr = v & 0x1f; break;
      case P0.DCR: this.dcr = v & 0x7f; break;
      case P0.IMR: this.imr = v & 0x7f; this.updateIrq(); break;
      default: break;
    }
  }

  private writeCommand(v: number): void {
    // RD = 1xx aborts. TXP is not stored: it reads back set while a transmit waits for credit.
    const rd = v & CR.RD_MASK;
    let stsp = this.cr & (CR.STP | CR.STA);
    if (v & CR.STP) stsp = CR.STP;
    else if (v & CR.STA) stsp = CR.STA;
    this.cr = (v & CR.PS_MASK) | (rd & CR.RD_ABORT ? CR.RD_ABORT : rd) | stsp;
    if (this.cr & CR.STP) {
      this.isr |= ISR.RST;
      this.txPending = false;
      const n = this.link?.discardAll() ?? 0;
      this.drops.rxStopped += n;
      this.counters?.rxDropped.add(n);
      this.link?.flush();
    } else {
      this.isr &= ~ISR.RST;
    }
    if (rd & CR.RD_ABORT) this.dmaActive = false;
    else if (rd === CR.RD_READ || rd === CR.RD_WRITE) this.startRemoteDma();
    else if (rd === CR.RD_SEND) {
      // "Send packet": one frame from BNRY, its length from the ring header there.
      this.rsar = this.bnry << 8;
      this.rbcr = this.cardRead(this.rsar + 2) | (this.cardRead(this.rsar + 3) << 8);
      this.cr = (this.cr & ~CR.RD_MASK) | CR.RD_READ;
      this.startRemoteDma();
    }
    if ((v & CR.TXP) && (this.cr & CR.STA) && !this.txPending) this.transmit();
    this.updateIrq();
    if (this.cr & CR.STA) this.receiveWaiting();
  }

  private startRemoteDma(): void {
    this.dmaActive = this.rbcr > 0;
    if (!this.dmaActive) this.remoteDmaDone();
  }

  private remoteDmaDone(): void {
    this.dmaActive = false;
    this.isr |= ISR.RDC;
    this.cr = (this.cr & ~CR.RD_MASK) | CR.RD_ABORT;
    this.updateIrq();
  }

  // --- card memory and the remote DMA ---------------------------------------------------

  /** One byte of card memory at a 16-bit address: the PROM, the RAM, or 0xff (nothing there). */
  private cardRead(address: number): number {
    const a = address & 0xffff;
    if (a < NE2K_PROM_BYTES) return this.prom[a];
    const r = a - NE2K_RAM_START;
    return r >= 0 && r < NE2K_RAM_BYTES ? this.ram[r] : 0xff;
  }

  private cardWrite(address: number, v: number): void {
    const r = (address & 0xffff) - NE2K_RAM_START;
    if (r >= 0 && r < NE2K_RAM_BYTES) this.ram[r] = v;
  }

  /** The next remote DMA address: +1, from PSTOP back to PSTART as the ring does (a valid ring only). */
  private nextRemote(address: number): number {
    const next = (address + 1) & 0xffff;
    return next === this.pstop << 8 && this.pstart < this.pstop ? this.pstart << 8 : next;
  }

  /** Bytes one data-port access moves: a word per byte or word access in word mode, 4 for a dword. */
  private dataBytes(size: number): number {
    if (size === 4) return 4;
    return this.dcr & DCR_WTS ? 2 : size;
  }

  private dataRead(size: number): number {
    const n = this.dataBytes(size);
    if (!this.dmaActive) return size === 4 ? 0xffffffff : size === 2 ? 0xffff : 0xff;
    if (n >= 2) this.rsar &= ~1; // word transfers use even addresses
    let v = 0;
    for (let i = 0; i < n; i++) {
      v |= this.cardRead(this.rsar) << (8 * i);
      this.rsar = this.nextRemote(this.rsar);
    }
    this.countDma(n);
    return size === 4 ? v >>> 0 : size === 2 ? v & 0xffff : v & 0xff;
  }

  private dataWrite(size: number, value: number): void {
    if (!this.dmaActive) return;
    const n = this.dataBytes(size);
    if (n >= 2) this.rsar &= ~1;
    for (let i = 0; i < n; i++) {
      this.cardWrite(this.rsar, (value >>> (8 * i)) & 0xff);
      this.rsar = this.nextRemote(this.rsar);
    }
    this.countDma(n);
  }

  private countDma(n: number): void {
    this.rbcr = Math.max(0, this.rbcr - n);
    if (this.rbcr === 0) this.remoteDmaDone();
  }

  // --- interrupts -------------------------------------------------------------------------

  private updateIrq(): void {
    const level = (this.isr & this.imr & 0x7f) !== 0;
    if (level === this.irqLevel) return; // most register writes change nothing: no PIRQ refresh
    this.irqLevel = level;
    this.setIntx(level);
  }

  /** The interrupt status register as the guest reads it (tests). */
  get interruptStatus(): number {
    return this.isr;
  }

  // --- transmit ---------------------------------------------------------------------------

  private transmit(): void {
    const length = this.tbcr;
    // Loopback modes keep the frame on the card: it goes to our own receiver.
    const loopback = (this.tcr & TCR_LOOPBACK) !== 0;
    if (length < NET_MIN_FRAME || length > NE2K_MAX_FRAME) {
      this.drops.txBadLength++;
      this.counters?.txDropped.add();
      this.finishTransmit(TSR.ABT, ISR.TXE);
      return;
    }
    if (!loopback && this.link && !this.link.canTransmit) {
      this.txPending = true; // onTransmitReady comes back here
      return;
    }
    this.txPending = false;
    const frame = this.txBuffer.subarray(0, length);
    let a = this.tpsr << 8;
    for (let i = 0; i < length; i++, a = (a + 1) & 0xffff) frame[i] = this.cardRead(a);
    if (loopback) {
      if (this.deliver(frame.slice()) === 'wait') {
        this.drops.rxOverflow++;
        this.counters?.rxDropped.add();
      }
    } else if (this.link) {
      this.link.transmit(frame); // copied into its record
      this.counters?.txPackets.add();
      this.counters?.txBytes.add(length);
    } else {
      this.drops.txNoLink++;
      this.counters?.txDropped.add();
    }
    this.finishTransmit(TSR.PTX, ISR.PTX);
  }

  private finishTransmit(tsr: number, isr: number): void {
    this.txPending = false;
    this.tsr = tsr;
    this.isr |= isr;
    this.updateIrq();
  }

  // --- receive ----------------------------------------------------------------------------

  private get ringValid(): boolean {
    const { pstart, pstop, curr } = this;
    return pstart < pstop && curr >= pstart && curr < pstop;
  }

  /**
   * BNRY as a page of the ring. 8390.c writes next - 1 without wrapping, so PSTART - 1 stands
   * for PSTOP - 1 (the page before PSTART); any other value outside the ring is taken the same way.
   */
  private get boundary(): number {
    return this.bnry >= this.pstart && this.bnry < this.pstop ? this.bnry : this.pstop - 1;
  }

  /**
   * The guest acknowledged PRX. Frames the card put in the ring while the guest was reading it
   * (room freed by its BNRY writes) or that wait in the link would otherwise go unnoticed:
   * 8390.c reads at most 9 frames per interrupt and acknowledges PRX after them. So waiting
   * frames come in now, and PRX stays set while the ring holds frames the guest has not read
   * (from BNRY + 1 to CURR).
   */
  private afterReceiveAck(): void {
    this.receiveWaiting();
    if (!this.ringValid) return;
    const nextRead = this.boundary + 1 >= this.pstop ? this.pstart : this.boundary + 1;
    if (nextRead !== this.curr) this.isr |= ISR.PRX;
  }

  /** Frames that wait in the link go into the ring while it has room. */
  private receiveWaiting(): void {
    const link = this.link;
    if (!link || link.peek() === undefined) return;
    if (this.cr & CR.STP) {
      const n = link.discardAll();
      this.drops.rxStopped += n;
      this.counters?.rxDropped.add(n);
      link.flush();
      return;
    }
    if (!(this.cr & CR.STA)) return;
    let frame: Uint8Array | undefined;
    while ((frame = link.peek()) !== undefined) {
      if (this.deliver(frame) === 'wait') break;
      link.take();
    }
    link.flush();
  }

  /** Checks a frame against the filter and puts it in the ring; 'wait' when the ring has no room. */
  private deliver(frame: Uint8Array): 'taken' | 'wait' {
    const drop = (reason: keyof Ne2000Pci['drops']): 'taken' => {
      this.drops[reason]++;
      this.counters?.rxDropped.add();
      return 'taken';
    };
    if (frame.length > NE2K_MAX_FRAME || frame.length < 6) return drop('rxTooLong');
    const multicast = (frame[0] & 1) !== 0;
    if (!this.accepts(frame)) return drop('rxFiltered');
    if (this.rcr & RCR.MON) {
      this.rsr = RSR.DIS | (multicast ? RSR.PHY : 0);
      return drop('rxMonitor');
    }
    if (!this.ringValid) {
      if (this.drops.rxBadRing === 0) this.logLine(`${this.name}: frames dropped: the receive ring is not usable (PSTART 0x${this.pstart.toString(16)}, PSTOP 0x${this.pstop.toString(16)}, CURR 0x${this.curr.toString(16)})`);
      this.missed();
      return drop('rxBadRing');
    }
    let data = frame;
    if (data.length < NE2K_MIN_FRAME) {
      this.padded.fill(0);
      this.padded.set(data);
      data = this.padded;
    }
    const count = data.length + 4;
    // The next frame starts on a fresh page after the last byte (Linux's 8390.c expects this).
    const pages = 1 + (count >> 8);
    const ringPages = this.pstop - this.pstart;
    const free = ((this.boundary - this.curr + ringPages) % ringPages) || ringPages;
    if (pages >= free) {
      if (!this.dropOnOverflow) return 'wait';
      this.isr |= ISR.OVW;
      this.missed();
      this.updateIrq();
      return drop('rxOverflow');
    }
    let next = this.curr + pages;
    if (next >= this.pstop) next -= ringPages;
    this.rsr = RSR.PRX | (multicast ? RSR.PHY : 0);
    let a = this.curr << 8;
    const put = (v: number) => {
      this.cardWrite(a, v);
      a = (a + 1) & 0xffff;
      if (a === this.pstop << 8) a = this.pstart << 8;
    };
    put(this.rsr);
    put(next);
    put(count & 0xff);
    put(count >> 8);
    for (let i = 0; i < data.length; i++) put(data[i]);
    this.curr = next;
    this.counters?.rxPackets.add();
    this.counters?.rxBytes.add(frame.length);
    this.isr |= ISR.PRX;
    this.updateIrq();
    return 'taken';
  }

  /** The missed-packet tally (CNTR2); ISR.CNT once its top bit is set. */
  private missed(): void {
    if (this.cntr[2] < 0xff) this.cntr[2]++;
    if (this.cntr[2] & 0x80) this.isr |= ISR.CNT;
  }

  /** The address filter: promiscuous, broadcast, multicast hash, our PAR. */
  private accepts(frame: Uint8Array): boolean {
    if (this.rcr & RCR.PRO) return true;
    if (frame[0] & 1) {
      let broadcast = true;
      for (let i = 0; i < 6; i++) if (frame[i] !== 0xff) broadcast = false;
      if (broadcast) return (this.rcr & RCR.AB) !== 0;
      if (!(this.rcr & RCR.AM)) return false;
      const bit = multicastHashIndex(frame);
      return (this.mar[bit >> 3] & (1 << (bit & 7))) !== 0;
    }
    for (let i = 0; i < 6; i++) if (frame[i] !== this.par[i]) return false;
    return true;
  }

  close(): void {
    this.link?.close();
  }
}
