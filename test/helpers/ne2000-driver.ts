// A host-side driver for the NE2000 model in tests: port accesses on its I/O BAR as Linux's
// ne2k-pci and 8390.c make them, a fake VM host on its NicLink, and its INTx line.
import { Ne2000Pci, type Ne2000Options } from '../../main/vmm/devices/net/ne2000';
import { NicLink } from '../../main/vmm/devices/net/nic-link';
import { privateStatistics } from '../../main/vmm/devices/device';
import { decodeNetCount, decodeNetRecord, encodeNetCount, encodeNetFrame, NET_KIND } from '../../main/vmm/shared/net-messages';

export const MAC = Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);
export const RX_START = 0x46;
export const RX_STOP = 0x80;
export const TX_START = 0x40;
const ISR_PRX = 0x01;

/** The VM host's side: records sent, a channel that can be made full, timers run by hand. */
export class FakeNetHost {
  readonly sent: { kind: number; body: Uint8Array }[] = [];
  full = false;
  readonly timers: (() => void)[] = [];
  readonly io = {
    send: (kind: number, payload: Uint8Array): boolean => {
      if (this.full) return false;
      const r = decodeNetRecord(payload)!;
      this.sent.push({ kind, body: r.body.slice() });
      return true;
    },
    setTimer: (_ms: number, fn: () => void) => {
      this.timers.push(fn);
      return () => { const i = this.timers.indexOf(fn); if (i >= 0) this.timers.splice(i, 1); };
    },
  };
  frames(): Uint8Array[] {
    return this.sent.filter((r) => r.kind === NET_KIND.TX_FRAME).map((r) => r.body);
  }
  credits(kind: number): number {
    return this.sent.filter((r) => r.kind === kind).reduce((n, r) => n + decodeNetCount(r.body), 0);
  }
}

export class Ne2000TestDriver {
  readonly host = new FakeNetHost();
  readonly link: NicLink | null;
  readonly device: Ne2000Pci;
  readonly statistics = privateStatistics();
  readonly logs: string[] = [];
  irq = false;
  irqChanges = 0;
  /** Ring headers whose next page 8390.c's ei_receive would call mismatched. */
  headerMismatches = 0;

  constructor(opts: Partial<Ne2000Options> & { noLink?: boolean } = {}) {
    this.link = opts.noLink ? null : new NicLink(0, this.host.io);
    this.device = new Ne2000Pci({ name: 'net0', mac: MAC, link: this.link, statistics: this.statistics, log: (t) => this.logs.push(t), ...opts });
    this.device.bus = {
      signalMsi: () => {},
      setIntx: (_d, _pin, level) => { if (level !== this.irq) this.irqChanges++; this.irq = level; },
    };
  }

  inb(port: number): number { return this.device.ports.read(port, 1); }
  inw(port: number): number { return this.device.ports.read(port, 2); }
  inl(port: number): number { return this.device.ports.read(port, 4); }
  outb(port: number, v: number): void { this.device.ports.write(port, 1, v); }
  outw(port: number, v: number): void { this.device.ports.write(port, 2, v); }
  outl(port: number, v: number): void { this.device.ports.write(port, 4, v); }

  page(n: number): void {
    this.outb(0, (this.inb(0) & 0x3f & ~0x04) | (n << 6));
  }

  /** The reset port, then the wait for ISR.RST and its acknowledge (ne2k_pci_reset_8390). */
  reset(): void {
    this.outb(0x1f, this.inb(0x1f));
    if (!(this.inb(7) & 0x80)) throw new Error('reset did not set ISR.RST');
    this.outb(7, 0xff);
  }

  /** NS8390_init then start, as Linux's 8390.c does (word mode, ring 0x46-0x80, all interrupts). */
  start(opts: { rcr?: number; mar?: Uint8Array } = {}): void {
    this.outb(0, 0x21); // stop, no DMA, page 0
    this.outb(0x0e, 0x49); // DCR: word transfers, FIFO 8 bytes
    this.outb(0x0a, 0);
    this.outb(0x0b, 0);
    this.outb(0x0c, 0x20); // RCR: monitor while setting up
    this.outb(0x0d, 0x02); // TCR: internal loopback
    this.outb(0x04, TX_START);
    this.outb(0x01, RX_START);
    this.outb(0x03, RX_STOP - 1);
    this.outb(0x02, RX_STOP);
    this.outb(0x07, 0xff);
    this.outb(0x0f, 0);
    this.outb(0, 0x61); // page 1, stop
    for (let i = 0; i < 6; i++) this.outb(1 + i, MAC[i]);
    this.outb(7, RX_START);
    for (let i = 0; i < 8; i++) this.outb(8 + i, opts.mar?.[i] ?? 0);
    this.outb(0, 0x21);
    this.outb(0x07, 0xff);
    this.outb(0x0f, 0x3f); // ENISR_ALL
    this.outb(0, 0x22); // start
    this.outb(0x0d, 0x00); // TCR: normal
    this.outb(0x0c, opts.rcr ?? 0x04); // RCR: broadcast
  }

  /** Remote DMA write of `data` at card address `at` (word mode, outsw). */
  remoteWrite(at: number, data: Uint8Array): void {
    const count = (data.length + 1) & ~1;
    this.outb(0x0a, count & 0xff);
    this.outb(0x0b, count >> 8);
    this.outb(0x08, at & 0xff);
    this.outb(0x09, at >> 8);
    this.outb(0, 0x12); // remote write, start
    for (let i = 0; i < count; i += 2) this.outw(0x10, (data[i] ?? 0) | ((data[i + 1] ?? 0) << 8));
  }

  /** Remote DMA read of `count` bytes at `at` with 32-bit accesses (ne2k-pci's insl) and a tail. */
  remoteRead(at: number, count: number): Uint8Array {
    this.outb(0x0a, count & 0xff);
    this.outb(0x0b, count >> 8);
    this.outb(0x08, at & 0xff);
    this.outb(0x09, at >> 8);
    this.outb(0, 0x0a); // remote read, start
    const out = new Uint8Array(count);
    let i = 0;
    for (; i + 4 <= count; i += 4) {
      const v = this.inl(0x10);
      out[i] = v & 0xff; out[i + 1] = (v >>> 8) & 0xff; out[i + 2] = (v >>> 16) & 0xff; out[i + 3] = v >>> 24;
    }
    if (count & 2) {
      const v = this.inw(0x10);
      out[i++] = v & 0xff; out[i++] = v >> 8;
    }
    if (count & 1) out[i] = this.inb(0x10);
    return out;
  }

  /** Puts a frame in card memory and transmits it (ei_start_xmit's order). */
  send(frame: Uint8Array): void {
    this.remoteWrite(TX_START << 8, frame);
    this.outb(7, 0x40); // ack RDC
    this.outb(0x04, TX_START);
    this.outb(0x05, frame.length & 0xff);
    this.outb(0x06, frame.length >> 8);
    this.outb(0, 0x26); // start, TXP, no DMA
  }

  /** A frame from the backend. */
  arrive(frame: Uint8Array): void {
    this.link!.onRecord(NET_KIND.FRAME, frame);
  }

  giveTxCredit(n: number): void {
    this.link!.onRecord(NET_KIND.TX_CREDIT, decodeNetRecord(encodeNetCount(0, n))!.body);
  }

  /**
   * 8390.c's ei_interrupt for receive: while ISR shows PRX (at most 12 rounds), ei_receive reads
   * up to 9 frames and then acknowledges PRX. Returns what it read.
   */
  interruptLikeLinux(): Uint8Array[] {
    const frames: Uint8Array[] = [];
    for (let round = 0; round < 12 && (this.inb(7) & ISR_PRX); round++) {
      frames.push(...this.receiveAll(9).map((f) => f.frame));
      this.outb(7, 0x05);
    }
    return frames;
  }

  /** Frames in the ring from BNRY+1 to CURR as 8390.c's ei_receive reads them (up to `limit`); moves BNRY. */
  receiveAll(limit = 256): { status: number; frame: Uint8Array }[] {
    const frames: { status: number; frame: Uint8Array }[] = [];
    for (let guard = 0; guard < limit; guard++) {
      this.outb(0, 0x62); // page 1
      const curr = this.inb(7);
      this.outb(0, 0x22);
      let thisFrame = this.inb(3) + 1;
      if (thisFrame >= RX_STOP) thisFrame = RX_START;
      if (thisFrame === curr) break;
      const hdr = this.remoteRead(thisFrame << 8, 4);
      const count = hdr[2] | (hdr[3] << 8);
      const frame = this.remoteRead((thisFrame << 8) + 4, count - 4);
      frames.push({ status: hdr[0], frame });
      const next = hdr[1];
      const expected = thisFrame + 1 + ((count - 4 + 4) >> 8);
      const pages = RX_STOP - RX_START;
      if (next !== expected && next !== expected + 1 && next !== expected - pages && next !== expected + 1 - pages) this.headerMismatches++;
      this.outb(3, next - 1); // as ei_receive: PSTART - 1 after a wrap, not PSTOP - 1
    }
    return frames;
  }
}

export function ethFrame(dst: Uint8Array | number[], length: number, fill = 0): Uint8Array {
  const f = new Uint8Array(length);
  f.set(dst, 0);
  f.set([0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc], 6);
  f[12] = 0x08; f[13] = 0x00;
  for (let i = 14; i < length; i++) f[i] = (i * 7 + fill) & 0xff;
  return f;
}

export { encodeNetFrame };
