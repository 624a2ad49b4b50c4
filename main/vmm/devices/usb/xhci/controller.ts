// The xHCI controller (xHCI 1.2): its MMIO registers over one 64 KiB BAR, the command ring,
// interrupters, root hub ports, and the glue between the parts (rings.ts, ports.ts,
// slots.ts, transfers.ts). Independent of PCI: the wiring gives it DMA, an interrupt sink
// and a clock. Runs on the machine thread.
import type { DmaMemory } from '../../../memory/dma';
import type { UsbDevice, UsbSpeed } from '../usb-device';
import {
  CAP_HCIVERSION, CAP_LENGTH, CC_COMMAND_RING_STOPPED, CC_SUCCESS, CRCR_CA, CRCR_CRR, CRCR_CS, DB_BASE, ERDP_EHB,
  ERST_MAX_LOG2, IMAN_IE, IMAN_IP, IR_ERDP, IR_ERSTBA, IR_ERSTSZ, IR_IMAN, IR_IMOD, MAX_COMMANDS_PER_KICK, MAX_INTRS,
  MAX_PORTS, MAX_SLOTS, OP_BASE, OP_CONFIG, OP_CRCR, OP_DCBAAP, OP_DNCTRL, OP_PAGESIZE, OP_USBCMD, OP_USBSTS,
  PORT_BASE, PORT_STRIDE, RT_BASE, RT_IR_BASE, RT_IR_STRIDE, RT_MFINDEX, TRB_COMMAND_COMPLETION,
  TRB_PORT_STATUS_CHANGE, USB2_PORTS, USB3_PORTS, USBCMD_HCRST, USBCMD_INTE, USBCMD_RS, USBCMD_STORED,
  MFINDEX_WRAP_MS, TRB_MFINDEX_WRAP, USBCMD_EWE,
  USBSTS_EINT, USBSTS_HCE, USBSTS_HCH, USBSTS_HSE, USBSTS_PCD, USBSTS_RW1C, XECP_BASE, XHCI_BAR_SIZE, REGISTER_PAGE_WORDS,
} from './constants';
import { high32, low32, newSlots, pointer, type Slot, TWO_32, type XhciServices } from './core';
import { XhciPort } from './ports';
import { EventRing, FETCH_DMA_ERROR, FETCH_EMPTY, FETCH_OK, fetchTrb, INTERRUPTER_WORDS, newTrb, type RingCursor } from './rings';
import { CommandRunner } from './slots';
import { TransferEngine } from './transfers';
import type { UsbCaptureTap } from './capture';
import type { StatsRegistry } from '../../../shared/stats';
import { UsbTrafficStats } from './traffic-stats';

// Words of the register page (XhciOptions.registerPage) that hold operational registers.
const W_USBCMD = (OP_BASE + OP_USBCMD) >>> 2;
const W_USBSTS = (OP_BASE + OP_USBSTS) >>> 2;
const W_PAGESIZE = (OP_BASE + OP_PAGESIZE) >>> 2;
const W_DNCTRL = (OP_BASE + OP_DNCTRL) >>> 2;
const W_CRCR = (OP_BASE + OP_CRCR) >>> 2;
const W_DCBAAP = (OP_BASE + OP_DCBAAP) >>> 2;
const W_CONFIG = (OP_BASE + OP_CONFIG) >>> 2;

/** Where the controller's interrupts go (MSI-X vectors or INTx; the wiring decides). */
export interface XhciInterruptSink {
  /**
   * Interrupter `interrupter` asserts its interrupt. Return true when it was delivered as a
   * message (MSI/MSI-X): IMAN.IP then clears by itself (xHCI 5.5.2.1); otherwise the line
   * stays up until lower().
   */
  raise(interrupter: number): boolean | void;
  /** The interrupter's level dropped (software cleared IP or IE, or INTE). */
  lower?(interrupter: number): void;
}

export interface XhciClock {
  /** Milliseconds, monotonic (fractions welcome): MFINDEX and interrupt moderation. */
  now(): number;
  /** Runs `fn` after about `delayMs` on the controller's thread; returns a cancel function. */
  setTimer(delayMs: number, fn: () => void): () => void;
}

export interface XhciOptions {
  /** Guest memory as this PCI function sees it (refuses DMA while bus mastering is off). */
  dma: DmaMemory;
  interrupts: XhciInterruptSink;
  clock: XhciClock;
  /** Adds to a statistics counter (names: commands, events, interrupts, transfers, bytes-in, ...). */
  count?: (name: string, n: number) => void;
  /** Where per device and endpoint counters go (usb<port>-<kind>/ep...); none without it. */
  statistics?: StatsRegistry;
  log?: (text: string) => void;
  /**
   * Where the interrupters keep their registers (INTERRUPTER_WORDS per interrupter, as the
   * guest reads them): the PCI function passes memory it maps into the guest read-only.
   */
  interrupterRegisters?: Uint32Array;
  /**
   * BAR 0's first page (REGISTER_PAGE_WORDS words): the capability, operational and port
   * registers, kept as the guest reads them; the PCI function maps it into the guest read-only.
   */
  registerPage?: Uint32Array;
  /**
   * Applies the guest's writes that KVM queued instead of exiting (the PCI function queues
   * USBSTS writes and ERDP's high dwords): called before the controller sets a USBSTS bit, so
   * that a write-1-to-clear the guest made earlier cannot clear a bit set after it, and before
   * it posts an event, so that the event ring's room follows the guest's last ERDP write.
   * Until then, a read of ERDP's high dword (the read-only page) still shows the older value.
   */
  settleQueuedWrites?: () => void;
}

export interface XhciPortInfo {
  /** 1-based port number, as the guest sees it. */
  port: number;
  protocol: 'usb2' | 'usb3';
  /** The device on the port, or null. */
  device: { name: string; speed: UsbSpeed; vendorId: number; productId: number } | null;
  enabled: boolean;
  /** PORTSC.PLS: 0 U0 (active), 3 U3 (suspended), 5 RxDetect (empty), 7 Polling... */
  linkState: number;
}

/**
 * Which register an MMIO access hits, for the per-register exit counters (each access is a
 * VM exit: these say which of a command's exits are the driver's interrupt handling).
 */
const REGISTER_KINDS = ['usbsts', 'portsc', 'iman', 'imod', 'erdp', 'doorbell', 'other'] as const;
const MMIO_READ_COUNTERS = REGISTER_KINDS.map((k) => `mmio-reads-${k}`);
const MMIO_WRITE_COUNTERS = REGISTER_KINDS.map((k) => `mmio-writes-${k}`);

function registerKind(offset: number): number {
  const off = offset & ~3;
  if (off === OP_BASE + OP_USBSTS) return 0;
  if (off >= PORT_BASE && off < PORT_BASE + MAX_PORTS * PORT_STRIDE) return 1;
  if (off >= RT_BASE + RT_IR_BASE && off < RT_BASE + RT_IR_BASE + MAX_INTRS * RT_IR_STRIDE) {
    const reg = (off - RT_BASE - RT_IR_BASE) & 0x1f;
    if (reg === IR_IMAN) return 2;
    if (reg === IR_IMOD) return 3;
    if (reg === IR_ERDP || reg === IR_ERDP + 4) return 4;
    return 6;
  }
  if (off >= DB_BASE && off <= DB_BASE + 4 * MAX_SLOTS) return 5;
  return 6;
}

export class XhciController implements XhciServices {
  static readonly BAR_SIZE = XHCI_BAR_SIZE;
  readonly dma: DmaMemory;
  readonly slots: Slot[] = newSlots();
  readonly ports: XhciPort[] = [];
  readonly interrupters: EventRing[] = [];
  private readonly transfers: TransferEngine;
  private readonly traffic: UsbTrafficStats | null;
  private readonly commands: CommandRunner;
  private readonly sink: XhciInterruptSink;
  private readonly clock: XhciClock;
  private readonly countFn: (name: string, n: number) => void;
  private readonly logFn: (text: string) => void;
  private readonly settleQueuedWrites: () => void;

  /** BAR 0's first page as the guest reads it: these registers live there (see XhciOptions). */
  private readonly page: Uint32Array;
  private get usbcmd(): number { return this.page[W_USBCMD]; }
  private set usbcmd(v: number) { this.page[W_USBCMD] = v; }
  private get usbsts(): number { return this.page[W_USBSTS]; }
  private set usbsts(v: number) { this.page[W_USBSTS] = v; }
  private get dnctrl(): number { return this.page[W_DNCTRL]; }
  private set dnctrl(v: number) { this.page[W_DNCTRL] = v; }
  private get config(): number { return this.page[W_CONFIG]; }
  private set config(v: number) { this.page[W_CONFIG] = v; }
  private get dcbaapLow(): number { return this.page[W_DCBAAP]; }
  private set dcbaapLow(v: number) { this.page[W_DCBAAP] = v; }
  private get dcbaapHigh(): number { return this.page[W_DCBAAP + 1]; }
  private set dcbaapHigh(v: number) { this.page[W_DCBAAP + 1] = v; }
  /** Command Ring Running: the one CRCR bit that reads back (the pointer reads as 0). */
  private get crr(): boolean { return (this.page[W_CRCR] & CRCR_CRR) !== 0; }
  private set crr(v: boolean) { this.page[W_CRCR] = v ? CRCR_CRR : 0; }
  private crcrLow = 0;
  private crcrHigh = 0;
  private readonly cmd: RingCursor = { ptr: 0, cycle: 1 };
  private cmdLoop = false;
  private cmdStopPending = false;
  private cmdTimer: (() => void) | null = null;
  private mfindexBase = 0;
  /** When an interrupt was raised that the guest's handler has not yet begun on (clock ms), or -1. */
  private interruptRaisedAt = -1;
  private mfindexHeld = 0;
  private wrapTimer: (() => void) | null = null;

  constructor(options: XhciOptions) {
    this.dma = options.dma;
    this.sink = options.interrupts;
    this.clock = options.clock;
    this.countFn = options.count ?? (() => {});
    this.logFn = options.log ?? (() => {});
    this.settleQueuedWrites = options.settleQueuedWrites ?? (() => {});
    this.page = options.registerPage ?? new Uint32Array(REGISTER_PAGE_WORDS);
    if (this.page.length < REGISTER_PAGE_WORDS) throw new Error(`the register page needs ${REGISTER_PAGE_WORDS} words`);
    this.page.fill(0);
    for (let off = 0; off < CAP_LENGTH; off += 4) this.page[off >>> 2] = this.readCapability(off);
    this.page[W_PAGESIZE] = 1; // 4 KiB
    const portEvents = {
      changed: (port: XhciPort) => this.portChanged(port),
      resetting: (port: XhciPort) => this.slotsOn(port.number).forEach((s) => this.transfers.abortSlot(s)),
    };
    for (let i = 1; i <= MAX_PORTS; i++) {
      const at = (PORT_BASE + (i - 1) * PORT_STRIDE) >>> 2;
      this.ports.push(new XhciPort(i, i <= USB3_PORTS, portEvents, this.page.subarray(at, at + 4)));
    }
    const registers = options.interrupterRegisters ?? new Uint32Array(MAX_INTRS * INTERRUPTER_WORDS);
    if (registers.length < MAX_INTRS * INTERRUPTER_WORDS) throw new Error(`the interrupters need ${MAX_INTRS * INTERRUPTER_WORDS} register words`);
    for (let i = 0; i < MAX_INTRS; i++) this.interrupters.push(new EventRing(registers.subarray(i * INTERRUPTER_WORDS, (i + 1) * INTERRUPTER_WORDS)));
    this.transfers = new TransferEngine(this);
    this.traffic = options.statistics ? new UsbTrafficStats(options.statistics) : null;
    this.transfers.traffic = this.traffic;
    this.commands = new CommandRunner(this, this.transfers, () => pointer(this.dcbaapLow, this.dcbaapHigh), () => this.config & 0xff);
    this.reset();
  }

  // --- what the wiring uses ----------------------------------------------------------------

  /** Power-on / PCI reset (also what USBCMD.HCRST does). Devices stay plugged in. */
  reset(): void {
    this.halt();
    this.commands.reset();
    for (const slot of this.slots) {
      this.transfers.abortSlot(slot);
      slot.enabled = false;
      slot.state = 0;
      slot.endpoints.fill(null);
      slot.port = slot.address = slot.outputContext = slot.interrupterTarget = 0;
    }
    for (let i = 0; i < this.interrupters.length; i++) {
      const ir = this.interrupters[i];
      if (ir.asserted) this.sink.lower?.(i);
      ir.reset();
    }
    this.usbcmd = 0;
    this.usbsts = USBSTS_HCH;
    this.interruptRaisedAt = -1;
    this.dnctrl = this.config = 0;
    this.dcbaapLow = this.dcbaapHigh = this.crcrLow = this.crcrHigh = 0;
    this.crr = false;
    this.cmdStopPending = false;
    this.cmd.ptr = 0;
    this.cmd.cycle = 1;
    this.mfindexHeld = 0;
    for (const port of this.ports) port.hcReset();
  }

  /** The running USB capture's tap, or null. */
  get capture(): UsbCaptureTap | null {
    return this.transfers.capture;
  }

  /** Starts capturing transfers into `tap`, or stops (null). */
  setCapture(tap: UsbCaptureTap | null): void {
    this.transfers.capture = tap;
  }

  /** Plugs a device into a port (1-based) of its speed class; throws if the port is wrong or taken. */
  attach(portNumber: number, device: UsbDevice): void {
    const port = this.ports[portNumber - 1];
    if (port === undefined) throw new Error(`xHCI has no port ${portNumber} (ports 1..${MAX_PORTS})`);
    if (port.device !== null) throw new Error(`xHCI port ${portNumber} already has ${port.device.name}`);
    if (!port.accepts(device.speed)) {
      throw new Error(`xHCI port ${portNumber} is a USB ${port.usb3 ? 3 : 2} port: ${device.name} is ${device.speed} speed`);
    }
    device.attach({ wakeup: () => port.remoteWake(), log: (text) => this.logFn(`usb port ${portNumber}: ${text}`) });
    port.connect(device);
    this.traffic?.plugged(portNumber, device.name);
    this.count('attaches');
  }

  /** Plugs a device into the first free port of its speed class; returns the port, or -1 if none. */
  attachAnywhere(device: UsbDevice): number {
    const port = this.ports.find((p) => p.device === null && p.accepts(device.speed));
    if (port === undefined) return -1;
    this.attach(port.number, device);
    return port.number;
  }

  /** Unplugs the device on a port (its transfers are dropped); returns it, or null. */
  detach(portNumber: number): UsbDevice | null {
    const port = this.ports[portNumber - 1];
    if (port === undefined || port.device === null) return null;
    for (const slot of this.slotsOn(portNumber)) this.transfers.abortSlot(slot);
    const device = port.device;
    port.disconnect();
    device.detach();
    this.traffic?.unplugged(portNumber);
    this.count('detaches');
    return device;
  }

  /** The ports and what sits on each (for the UI). */
  portList(): XhciPortInfo[] {
    return this.ports.map((p) => ({
      port: p.number,
      protocol: p.usb3 ? 'usb3' : 'usb2',
      device: p.device === null ? null : { name: p.device.name, speed: p.device.speed, vendorId: p.device.vendorId, productId: p.device.productId },
      enabled: p.isEnabled,
      linkState: p.linkState,
    }));
  }

  // --- MMIO ------------------------------------------------------------------------------

  /** A guest read of `size` (1, 2, 4 or 8) bytes at `offset` in the BAR. */
  read(offset: number, size: number): number {
    this.count('mmio-reads');
    this.count(MMIO_READ_COUNTERS[registerKind(offset)]);
    if (!(offset >= 0 && offset + size <= XHCI_BAR_SIZE)) return 0;
    if (size === 8) return this.read32(offset & ~3) + this.read32((offset & ~3) + 4) * TWO_32;
    const dword = this.read32(offset & ~3);
    const shift = (offset & 3) * 8;
    if (size >= 4) return dword >>> 0;
    return (dword >>> shift) & (size === 1 ? 0xff : 0xffff);
  }

  /**
   * A guest write. Dword writes, and qword writes (done as low then high dword). Byte and
   * word writes are ignored: xHCI registers are written as dwords (xHCI 5.1).
   */
  write(offset: number, size: number, value: number): void {
    this.count('mmio-writes');
    this.count(MMIO_WRITE_COUNTERS[registerKind(offset)]);
    if (!(offset >= 0 && offset + size <= XHCI_BAR_SIZE) || (offset & 3) !== 0) return;
    if (size === 8) {
      const v = Number.isFinite(value) && value >= 0 ? value : 0;
      this.write32(offset, low32(v));
      this.write32(offset + 4, high32(v));
    } else if (size === 4) {
      this.write32(offset, value >>> 0);
    }
  }

  private read32(off: number): number {
    // The capability, operational and port registers: what the guest reads without an exit
    // where the page is mapped, so the same words answer an exit.
    if (off < REGISTER_PAGE_WORDS * 4) {
      if (off === OP_BASE + OP_USBSTS) this.handlerBegan();
      return this.page[off >>> 2];
    }
    if (off === RT_BASE + RT_MFINDEX) return this.mfindex();
    if (off >= RT_BASE + RT_IR_BASE && off < RT_BASE + RT_IR_BASE + MAX_INTRS * RT_IR_STRIDE) {
      const rel = off - RT_BASE - RT_IR_BASE;
      return this.interrupters[rel >>> 5].register(rel & 0x1f);
    }
    if (off >= XECP_BASE && off < XECP_BASE + 32) return this.readExtendedCapability(off - XECP_BASE);
    return 0; // doorbells read as 0, the rest is reserved
  }

  private readCapability(off: number): number {
    switch (off) {
      case 0x00: return (CAP_LENGTH | (CAP_HCIVERSION << 16)) >>> 0;
      case 0x04: return (MAX_SLOTS | (MAX_INTRS << 8) | (MAX_PORTS << 24)) >>> 0; // HCSPARAMS1
      case 0x08: return 1 | (ERST_MAX_LOG2 << 4); // HCSPARAMS2: IST 1 microframe, no scratchpads
      case 0x0c: return 0; // HCSPARAMS3: exit latencies
      case 0x10: return (1 | ((XECP_BASE >>> 2) << 16)) >>> 0; // HCCPARAMS1: AC64, 32-byte contexts, PPC 0
      case 0x14: return DB_BASE;
      case 0x18: return RT_BASE;
      default: return 0; // HCCPARAMS2
    }
  }

  /** Two Supported Protocol capabilities: USB 3.0 on ports 1..4, USB 2.0 on ports 5..8. */
  private readExtendedCapability(off: number): number {
    const usb3 = off < 16;
    switch (off & 0xf) {
      case 0: return (2 | ((usb3 ? 4 : 0) << 8) | ((usb3 ? 3 : 2) << 24)) >>> 0;
      case 4: return 0x20425355; // "USB "
      case 8: return usb3 ? 1 | (USB3_PORTS << 8) : (USB3_PORTS + 1) | (USB2_PORTS << 8);
      default: return 0; // slot type 0
    }
  }

  /**
   * The guest's interrupt handler has begun: Linux's and SeaBIOS's begin with a USBSTS read,
   * which exits where the register page is not mapped; where it is, the handler's ERDP write
   * is the first access that exits. How long an interrupt took to get there (a halted guest's
   * wake-up included) is counted for the benches.
   */
  private handlerBegan(): void {
    if (this.interruptRaisedAt < 0) return;
    this.count('irq-to-handler-us', Math.round((this.clock.now() - this.interruptRaisedAt) * 1000));
    this.count('irq-to-handler');
    this.interruptRaisedAt = -1;
  }

  /** With EWE set and the controller running, an MFINDEX Wrap Event at each wrap (xHCI 4.14.2). */
  private scheduleWrapEvent(): void {
    this.wrapTimer?.();
    this.wrapTimer = null;
    if (!this.running() || !(this.usbcmd & USBCMD_EWE)) return;
    const wrapsSoFar = () => Math.floor((this.clock.now() - this.mfindexBase) / MFINDEX_WRAP_MS);
    const nextWrap = wrapsSoFar() + 1;
    const arm = () => {
      const untilWrap = this.mfindexBase + nextWrap * MFINDEX_WRAP_MS - this.clock.now();
      this.wrapTimer = this.clock.setTimer(Math.max(0, untilWrap), () => {
        this.wrapTimer = null;
        if (!this.running() || !(this.usbcmd & USBCMD_EWE)) return;
        if (wrapsSoFar() < nextWrap) return arm(); // a timer that fired early
        this.postEvent(0, 0, 0, CC_SUCCESS << 24, TRB_MFINDEX_WRAP << 10, false);
        this.count('mfindex-wraps');
        this.scheduleWrapEvent();
      });
    };
    arm();
  }

  private mfindex(): number {
    if (!this.running()) return this.mfindexHeld;
    return Math.floor((this.clock.now() - this.mfindexBase) * 8) & 0x3fff;
  }

  private write32(off: number, v: number): void {
    if (off < CAP_LENGTH) return;
    if (off >= PORT_BASE && off < PORT_BASE + MAX_PORTS * PORT_STRIDE) {
      const port = this.ports[(off - PORT_BASE) >>> 4];
      switch (off & 0xf) {
        case 0: port.write(v); break;
        case 4: port.pmsc = v; break;
        case 0xc: port.hlpmc = v; break;
        default: break;
      }
      return;
    }
    if (off >= OP_BASE && off < PORT_BASE) return this.writeOperational(off - OP_BASE, v);
    if (off >= RT_BASE + RT_IR_BASE && off < RT_BASE + RT_IR_BASE + MAX_INTRS * RT_IR_STRIDE) {
      const rel = off - RT_BASE - RT_IR_BASE;
      return this.writeInterrupter(rel >>> 5, rel & 0x1f, v);
    }
    if (off >= DB_BASE && off <= DB_BASE + 4 * MAX_SLOTS) {
      this.count('doorbells');
      const index = (off - DB_BASE) >>> 2;
      const target = v & 0xff;
      if (index === 0) {
        if (target === 0) this.commandDoorbell();
      } else if (this.running()) {
        // Time on the machine thread per endpoint doorbell (the ring walk and, for a device that
        // answers at once like a stick, its work): what a transfer costs the vCPU it stops.
        const t0 = this.clock.now();
        this.transfers.doorbell(index, target);
        this.count('doorbell-us', Math.round((this.clock.now() - t0) * 1000));
      }
    }
  }

  private writeOperational(off: number, v: number): void {
    switch (off) {
      case OP_USBCMD: {
        if (v & USBCMD_HCRST) {
          this.reset();
          return;
        }
        const was = this.usbcmd;
        this.usbcmd = v & USBCMD_STORED;
        if ((v & USBCMD_RS) && !(was & USBCMD_RS)) this.start();
        else if (!(v & USBCMD_RS) && (was & USBCMD_RS)) this.halt();
        if ((v ^ was) & USBCMD_INTE) for (let i = 0; i < MAX_INTRS; i++) this.updateLine(i);
        if ((v ^ was) & (USBCMD_EWE | USBCMD_RS)) this.scheduleWrapEvent();
        return;
      }
      case OP_USBSTS:
        this.usbsts &= ~(v & USBSTS_RW1C);
        return;
      case OP_DNCTRL:
        this.dnctrl = v & 0xffff;
        return;
      case OP_CRCR:
      case OP_CRCR + 4:
        if (off === OP_CRCR) this.crcrLow = v;
        else this.crcrHigh = v;
        if (this.crr) {
          if (off === OP_CRCR && (v & (CRCR_CS | CRCR_CA))) this.stopCommandRing((v & CRCR_CA) !== 0);
        } else {
          this.cmd.ptr = pointer(this.crcrLow & ~0x3f, this.crcrHigh);
          this.cmd.cycle = this.crcrLow & 1;
        }
        return;
      case OP_DCBAAP:
        this.dcbaapLow = v & ~0x3f;
        return;
      case OP_DCBAAP + 4:
        this.dcbaapHigh = v;
        return;
      case OP_CONFIG:
        this.config = v & 0x3ff;
        return;
      default:
        return;
    }
  }

  private writeInterrupter(i: number, reg: number, v: number): void {
    const ir = this.interrupters[i];
    switch (reg) {
      case IR_IMAN:
        if (v & IMAN_IP) ir.iman &= ~IMAN_IP;
        ir.iman = (ir.iman & ~IMAN_IE) | (v & IMAN_IE);
        this.updateLine(i);
        return;
      case IR_IMOD:
        ir.imod = v >>> 0;
        return;
      case IR_ERSTSZ:
        ir.erstsz = v & 0xffff;
        return;
      case IR_ERSTBA:
      case IR_ERSTBA + 4: {
        if (reg === IR_ERSTBA) ir.erstbaLow = v & ~0x3f;
        else ir.erstbaHigh = v;
        const problem = ir.setup(this.dma);
        if (problem !== null) this.fatal(`interrupter ${i}: ${problem}`);
        return;
      }
      case IR_ERDP:
      case IR_ERDP + 4:
        if (reg === IR_ERDP) {
          this.handlerBegan();
          ir.erdpLow = ((v & ~0xf) | (v & 7)) >>> 0; // pointer and DESI; EHB is write-1-to-clear
          if (v & ERDP_EHB) ir.busy = false;
        } else {
          ir.erdpHigh = v;
        }
        ir.dequeueMoved();
        ir.pending = ir.hasUnread();
        this.signal(i);
        return;
      default:
        return;
    }
  }

  /** Sets USBSTS bits, after the guest's queued writes (write-1-to-clear) that came before. */
  private setStatus(bits: number): void {
    this.settleQueuedWrites();
    this.usbsts |= bits;
  }

  // --- run state --------------------------------------------------------------------------

  running(): boolean {
    return (this.usbcmd & USBCMD_RS) !== 0 && (this.usbsts & USBSTS_HCH) === 0;
  }

  private start(): void {
    if (this.usbsts & (USBSTS_HSE | USBSTS_HCE)) {
      this.usbcmd &= ~USBCMD_RS; // a controller in error does not run until reset
      return;
    }
    this.usbsts &= ~USBSTS_HCH;
    this.mfindexBase = this.clock.now() - this.mfindexHeld / 8;
  }

  /** Run/Stop cleared (by software or an error): everything in flight is dropped. */
  private halt(): void {
    if (this.running()) this.mfindexHeld = this.mfindex();
    this.usbcmd &= ~USBCMD_RS;
    this.setStatus(USBSTS_HCH);
    this.crr = false;
    this.cmdStopPending = false;
    this.cmdTimer?.();
    this.cmdTimer = null;
    this.wrapTimer?.();
    this.wrapTimer = null;
    this.commands.reset();
    for (const slot of this.slots) this.transfers.abortSlot(slot);
  }

  fatal(reason: string, controllerError = false): void {
    this.setStatus(controllerError ? USBSTS_HCE : USBSTS_HSE);
    this.count(controllerError ? 'host-controller-errors' : 'host-system-errors');
    this.logFn(`xhci: ${controllerError ? 'host controller error' : 'host system error'}: ${reason}`);
    this.halt();
  }

  count(name: string, n = 1): void {
    this.countFn(name, n);
  }

  setTimer(delayMs: number, fn: () => void): () => void {
    return this.clock.setTimer(delayMs, fn);
  }

  private slotsOn(portNumber: number): Slot[] {
    return this.slots.filter((s) => s.enabled && s.port === portNumber);
  }

  private portChanged(port: XhciPort): void {
    this.setStatus(USBSTS_PCD);
    if (this.running()) this.postEvent(0, (port.number << 24) >>> 0, 0, CC_SUCCESS << 24, TRB_PORT_STATUS_CHANGE << 10, false);
  }

  // --- command ring -------------------------------------------------------------------------

  private commandDoorbell(): void {
    if (!this.running()) return;
    this.crr = true;
    this.runCommands();
  }

  private runCommands(): void {
    if (this.cmdLoop || this.commands.busy) return;
    this.cmdLoop = true;
    try {
      for (let n = 0; this.crr && this.running(); n++) {
        if (n >= MAX_COMMANDS_PER_KICK) {
          if (this.cmdTimer === null) {
            this.cmdTimer = this.clock.setTimer(0, () => {
              this.cmdTimer = null;
              this.runCommands();
            });
          }
          return;
        }
        const trb = newTrb();
        const r = fetchTrb(this.dma, this.cmd, trb);
        if (r === FETCH_EMPTY) return;
        if (r !== FETCH_OK) {
          this.fatal(r === FETCH_DMA_ERROR
            ? `command TRB at 0x${this.cmd.ptr.toString(16)} is not readable`
            : 'Link TRB loop in the command ring', r !== FETCH_DMA_ERROR);
          return;
        }
        this.cmd.ptr += 16;
        let inside = true;
        let finished = false;
        this.commands.execute(trb, (code, slotId) => {
          finished = true;
          this.postEvent(0, low32(trb.addr), high32(trb.addr), code << 24 >>> 0, ((slotId << 24) | (TRB_COMMAND_COMPLETION << 10)) >>> 0, false);
          if (this.cmdStopPending) this.commandRingStopped();
          else if (!inside) this.runCommands();
        });
        inside = false;
        if (!finished) return; // waits for a device
      }
    } finally {
      this.cmdLoop = false;
    }
  }

  /** CRCR.CS / CA while the ring runs: stop after the current command (aborting it for CA). */
  private stopCommandRing(abort: boolean): void {
    this.cmdStopPending = true;
    if (abort) this.commands.abort();
    if (!this.commands.busy && this.cmdStopPending) this.commandRingStopped();
  }

  private commandRingStopped(): void {
    this.cmdStopPending = false;
    this.crr = false;
    const at = this.cmd.ptr;
    this.postEvent(0, low32(at), high32(at), CC_COMMAND_RING_STOPPED << 24, TRB_COMMAND_COMPLETION << 10, false);
  }

  // --- events and interrupts ----------------------------------------------------------------

  postEvent(interrupter: number, p0: number, p1: number, status: number, control: number, bei: boolean): void {
    if (!this.running()) {
      this.count('events-dropped');
      return;
    }
    const i = interrupter < MAX_INTRS ? interrupter : 0;
    const ir = this.interrupters[i];
    // A queued ERDP write (its high dword) came before this event: the ring's room follows it.
    this.settleQueuedWrites();
    if (!ir.valid) {
      this.fatal(`an event for interrupter ${i}, whose event ring is not set up`);
      return;
    }
    const r = ir.post(this.dma, p0, p1, status, control);
    if (r === 'dma') {
      this.fatal(`event ring segment of interrupter ${i} is not writable`);
      return;
    }
    this.count(r === 'ok' ? 'events' : 'events-dropped');
    if (!bei || r !== 'ok') this.signal(i);
  }

  /** Signals an interrupter with unread events, unless EHB or moderation holds it back. */
  private signal(i: number): void {
    const ir = this.interrupters[i];
    if (!ir.pending || ir.busy || !this.running()) return;
    const interval = (ir.imod & 0xffff) / 4000; // 250 ns units, in ms
    const now = this.clock.now();
    const wait = ir.lastInterrupt + interval - now;
    if (wait > 0) {
      if (ir.moderationTimer === null) {
        ir.moderationTimer = this.clock.setTimer(wait, () => {
          ir.moderationTimer = null;
          this.signal(i);
        });
      }
      return;
    }
    ir.lastInterrupt = now;
    if (this.interruptRaisedAt < 0) this.interruptRaisedAt = now;
    ir.busy = true;
    ir.iman |= IMAN_IP;
    this.setStatus(USBSTS_EINT);
    this.count('interrupts');
    this.updateLine(i);
  }

  private updateLine(i: number): void {
    const ir = this.interrupters[i];
    const want = (ir.iman & IMAN_IP) !== 0 && (ir.iman & IMAN_IE) !== 0 && (this.usbcmd & USBCMD_INTE) !== 0;
    if (want && !ir.asserted) {
      ir.asserted = true;
      if (this.sink.raise(i) === true) {
        ir.iman &= ~IMAN_IP;
        ir.asserted = false;
      }
    } else if (!want && ir.asserted) {
      ir.asserted = false;
      this.sink.lower?.(i);
    }
  }
}
