// A 16550A UART (the PC's COM ports): 8 byte-wide registers, 16-byte receive and
// transmit FIFOs, the four interrupt sources of the 16550A in their priority order,
// modem control/status lines with delta bits, loopback, and OUT2 gating of the IRQ
// as PC serial cards wire it.
//
// Timing model. A real UART moves one character per (1 + data + parity + stop) bit
// times; we have no per-port timers on the machine thread, so the line is modelled as
// infinitely fast in both directions:
// - Transmit: a THR write goes straight into the port's output ring. The holding
//   register is empty again at once, so THRE (and its interrupt) follow immediately.
//   When the ring is full the byte waits in the 16-byte TX FIFO and THRE/TEMT read 0:
//   a polling guest waits (backpressure, nothing dropped); THRE returns, with its
//   interrupt, once the host has drained the ring (checked on LSR/IIR access and by a
//   short retry timer: a machine timer, which the VM host kicks vCPU 0 to run when due).
// - Receive: host bytes wait in a host-side queue (bounded, beyond the 16-byte FIFO)
//   and move into the FIFO whenever it has room, so pasted text is not lost; the
//   guest never sees an overrun for host data unless that queue overflows.
// - Character timeout (IIR 0xC): on hardware it fires when the FIFO holds fewer bytes
//   than the trigger level and no character arrived for 4 character times. Host data
//   arrives in batches that are already complete, so that quiet period has always
//   elapsed: data below the trigger level reports the timeout at once, data at or
//   above it reports "data available" (IIR 0x4). Linux's 8250 driver treats both the
//   same (it reads RBR while LSR.DR is set) and SeaBIOS polls LSR, so both see the
//   hardware behaviour. A read of RBR restarts the timeout on hardware, which later
//   re-raises the interrupt as a new edge; we give the edge at once (the IRQ output is
//   pulsed) so an ISA edge-triggered PIC still interrupts a driver that reads one byte
//   per interrupt.
import { counter, type Counter, type DeviceFactory, type IoDevice, privateStatistics } from './device';
import type { HostNotification, LineSettings, ModemControl } from './context';
import type { IrqPin } from '../platform/irq';
import { COM_PORTS } from '../platform/layout';
import type { StatsRegistry } from '../shared/stats';
import { CHANNEL_TARGET } from '../shared/channel';
import { decodeModemStatus, SERIAL_KIND } from '../shared/serial-messages';

/** Where transmitted bytes go (the port's ByteRing to the VM host thread). */
export interface TransmitSink {
  push(byte: number): boolean;
  readonly free: number;
}

export interface ModemStatusLines {
  cts: boolean;
  dsr: boolean;
  ri: boolean;
  dcd: boolean;
}

export interface Uart16550Options {
  /** 0 for COM1 … 3 for COM4; used in host notifications. */
  port: number;
  name?: string;
  output: TransmitSink;
  irq: IrqPin;
  notifyHost(message: HostNotification): void;
  /** Runs `retry` a little later; the default is a 1 ms timer that does not keep the thread alive. */
  scheduleRetry?: (retry: () => void) => void;
  /** Where its counters go (group = its name); a private registry by default. */
  statistics?: StatsRegistry;
}

export interface UartCounters {
  /** Bytes the guest transmitted (to the host, or to itself in loopback). */
  txBytes: Counter;
  /** Bytes that entered the receive FIFO. */
  rxBytes: Counter;
  /** Bytes written to a full transmit FIFO, lost. */
  txDropped: Counter;
  /** Host bytes beyond the host queue, lost. */
  rxDropped: Counter;
  overruns: Counter;
}

// Register offsets.
const REG_DATA = 0; // RBR (read) / THR (write) / DLL (DLAB)
const REG_IER = 1; // IER / DLM (DLAB)
const REG_IIR = 2; // IIR (read) / FCR (write)
const REG_LCR = 3;
const REG_MCR = 4;
const REG_LSR = 5;
const REG_MSR = 6;
const REG_SCR = 7;

export const IER = { RX_DATA: 0x01, THR_EMPTY: 0x02, LINE_STATUS: 0x04, MODEM_STATUS: 0x08 } as const;
export const IIR = { NONE: 0x01, LINE_STATUS: 0x06, RX_DATA: 0x04, RX_TIMEOUT: 0x0c, THR_EMPTY: 0x02, MODEM_STATUS: 0x00, FIFOS_ON: 0xc0 } as const;
export const FCR = { ENABLE: 0x01, CLEAR_RX: 0x02, CLEAR_TX: 0x04 } as const;
export const LCR = { BREAK: 0x40, DLAB: 0x80 } as const;
export const MCR = { DTR: 0x01, RTS: 0x02, OUT1: 0x04, OUT2: 0x08, LOOP: 0x10 } as const;
export const LSR = { DR: 0x01, OE: 0x02, PE: 0x04, FE: 0x08, BI: 0x10, THRE: 0x20, TEMT: 0x40, RX_FIFO_ERROR: 0x80 } as const;
export const MSR = { DCTS: 0x01, DDSR: 0x02, TERI: 0x04, DDCD: 0x08, CTS: 0x10, DSR: 0x20, RI: 0x40, DCD: 0x80 } as const;

const FIFO_SIZE = 16;
const TRIGGER_LEVELS = [1, 4, 8, 14];
/** The 1.8432 MHz crystal divided by 16: the baud rate for divisor 1. */
const BASE_BAUD = 115200;
/** Host bytes waiting for the guest beyond the FIFO; more than this is an overrun. */
export const HOST_QUEUE_LIMIT = 1 << 20;
/** Marks a FIFO entry received as a break whose BI has not yet reached the LSR. */
const ENTRY_BREAK = 0x100;
const LINE_ERRORS = LSR.OE | LSR.PE | LSR.FE | LSR.BI;

export class Uart16550 implements IoDevice {
  readonly name: string;
  readonly port: number;
  private readonly output: TransmitSink;
  private readonly irq: IrqPin;
  private readonly notify: (m: HostNotification) => void;
  private readonly scheduleRetry: (retry: () => void) => void;

  // Programmer-visible registers.
  private ier = 0;
  private lcr = 0;
  private mcr = 0;
  private scr = 0;
  private dll = 12; // 9600 baud after reset, as PC firmware expects before it programs the port
  private dlm = 0;
  private fifoEnabled = false;
  private triggerLevel = 1;

  // Receive side: the FIFO (low byte = data, ENTRY_BREAK = error not yet reported) and the host queue.
  private readonly rxFifo = new Uint16Array(FIFO_SIZE);
  private rxHead = 0;
  private rxCount = 0;
  private lastReceived = 0;
  private readonly hostChunks: Uint8Array[] = [];
  private hostChunkOffset = 0;
  private hostQueued = 0;

  // Transmit side: bytes waiting for room in the output ring.
  private readonly txFifo = new Uint8Array(FIFO_SIZE);
  private txHead = 0;
  private txCount = 0;
  /** THR (and the transmitter) empty, as LSR.THRE last reported it. */
  private transmitterEmpty = true;
  /** The THRE interrupt source: set when THR becomes empty, cleared by an IIR read that reports it or a THR write. */
  private thrInterrupt = false;
  private retryPending = false;

  /** LSR error bits (OE, PE, FE, BI); cleared by reading LSR. */
  private lineErrors = 0;
  /** MSR bits 4..7 as the guest sees them and the delta bits 0..3 since the last MSR read. */
  private modemInputs: number;
  private modemDeltas = 0;
  /** CTS/DSR/RI/DCD from the host side (a real serial device), used outside loopback. */
  private externalInputs: number;

  private lastSettings: LineSettings | null = null;
  private lastModem: ModemControl = { dtr: false, rts: false };

  /** Counters in the statistics registry. */
  readonly counters: UartCounters;

  constructor(opts: Uart16550Options) {
    this.port = opts.port;
    this.name = opts.name ?? `COM${opts.port + 1}`;
    const statistics = opts.statistics ?? privateStatistics();
    this.counters = {
      txBytes: counter(statistics, this.name, 'tx-bytes', 'bytes'),
      rxBytes: counter(statistics, this.name, 'rx-bytes', 'bytes'),
      txDropped: counter(statistics, this.name, 'tx-dropped', 'bytes'),
      rxDropped: counter(statistics, this.name, 'rx-dropped', 'bytes'),
      overruns: counter(statistics, this.name, 'overruns'),
    };
    this.output = opts.output;
    this.irq = opts.irq;
    this.notify = opts.notifyHost;
    this.scheduleRetry = opts.scheduleRetry ?? ((retry) => { setTimeout(retry, 1).unref(); });
    // With no real device behind the port the lines a terminal would assert are on,
    // so guests waiting for carrier or clear-to-send can talk.
    this.externalInputs = MSR.CTS | MSR.DSR | MSR.DCD;
    this.modemInputs = this.externalInputs;
  }

  // --- IoDevice -------------------------------------------------------------
  // A wider access to this byte-wide ISA device is split into byte cycles on
  // consecutive ports, as the PC's bus does.
  read(offset: number, size: number): number {
    if (size === 1) return this.readRegister(offset);
    let value = 0;
    for (let i = 0; i < size; i++) value |= this.readRegister(offset + i) << (8 * i);
    return value >>> 0;
  }

  write(offset: number, size: number, value: number): void {
    if (size === 1) return this.writeRegister(offset, value & 0xff);
    for (let i = 0; i < size; i++) this.writeRegister(offset + i, (value >>> (8 * i)) & 0xff);
  }

  // --- host side ------------------------------------------------------------
  /** Bytes from the host backend for the guest. */
  receive(data: Uint8Array): void {
    if (data.length === 0) return;
    const room = HOST_QUEUE_LIMIT - this.hostQueued;
    let accepted = data;
    if (data.length > room) {
      // The guest is not reading and the host keeps sending: report the loss as an overrun.
      this.counters.rxDropped.add(data.length - room);
      this.counters.overruns.add();
      this.lineErrors |= LSR.OE;
      accepted = data.subarray(0, room);
    }
    if (accepted.length > 0) {
      this.hostChunks.push(accepted.slice());
      this.hostQueued += accepted.length;
    }
    this.refillFromHost();
    this.updateIrq();
  }

  /** CTS/DSR/RI/DCD of a real serial device behind this port. */
  setModemStatus(lines: ModemStatusLines): void {
    this.externalInputs = (lines.cts ? MSR.CTS : 0) | (lines.dsr ? MSR.DSR : 0) | (lines.ri ? MSR.RI : 0) | (lines.dcd ? MSR.DCD : 0);
    this.updateModemInputs();
    this.updateIrq();
  }

  /** Bytes received from the host that the guest has not read yet (FIFO and host queue). */
  get pendingInput(): number {
    return this.rxCount + this.hostQueued;
  }

  // --- registers --------------------------------------------------------------
  private get dlab(): boolean {
    return (this.lcr & LCR.DLAB) !== 0;
  }

  private get loopback(): boolean {
    return (this.mcr & MCR.LOOP) !== 0;
  }

  private readRegister(offset: number): number {
    switch (offset) {
      case REG_DATA:
        return this.dlab ? this.dll : this.readRbr();
      case REG_IER:
        return this.dlab ? this.dlm : this.ier;
      case REG_IIR:
        return this.readIir();
      case REG_LCR:
        return this.lcr;
      case REG_MCR:
        return this.mcr;
      case REG_LSR:
        return this.readLsr();
      case REG_MSR:
        return this.readMsr();
      case REG_SCR:
        return this.scr;
      default:
        return 0xff; // past the UART's eight ports
    }
  }

  private writeRegister(offset: number, value: number): void {
    switch (offset) {
      case REG_DATA:
        if (this.dlab) this.dll = value;
        else this.writeThr(value);
        break;
      case REG_IER:
        if (this.dlab) this.dlm = value;
        else this.writeIer(value);
        break;
      case REG_IIR:
        this.writeFcr(value);
        break;
      case REG_LCR:
        this.writeLcr(value);
        break;
      case REG_MCR:
        this.writeMcr(value);
        break;
      case REG_SCR:
        this.scr = value;
        break;
      default:
        // LSR and MSR writes are factory test modes on the 16550A; ignored.
        break;
    }
  }

  private readRbr(): number {
    if (this.rxCount === 0) return this.lastReceived;
    const value = this.rxFifo[this.rxHead] & 0xff;
    this.rxHead = (this.rxHead + 1) % FIFO_SIZE;
    this.rxCount--;
    this.lastReceived = value;
    this.refillFromHost();
    this.revealTopError();
    this.updateIrq();
    // Data left behind that a real UART would announce later (timeout, or the next
    // character in 16450 mode) gets a fresh edge now; see the timing model above.
    if (this.rxCount > 0 && (!this.fifoEnabled || this.rxCount < this.triggerLevel)) this.irq.pulse();
    return value;
  }

  private readIir(): number {
    this.refreshTransmitter();
    const id = this.interruptId();
    if (id === IIR.THR_EMPTY) {
      this.thrInterrupt = false;
      this.updateIrq();
    }
    return id | (this.fifoEnabled ? IIR.FIFOS_ON : 0);
  }

  private readLsr(): number {
    this.refreshTransmitter();
    let value = this.lineErrors;
    if (this.rxCount > 0) value |= LSR.DR;
    if (this.transmitterEmpty) value |= LSR.THRE | LSR.TEMT;
    if (this.fifoEnabled && ((this.lineErrors & (LSR.PE | LSR.FE | LSR.BI)) !== 0 || this.fifoHoldsError())) {
      value |= LSR.RX_FIFO_ERROR;
    }
    this.lineErrors = 0;
    this.updateIrq();
    return value;
  }

  private readMsr(): number {
    const value = this.modemInputs | this.modemDeltas;
    this.modemDeltas = 0;
    this.updateIrq();
    return value;
  }

  private writeThr(value: number): void {
    this.thrInterrupt = false;
    this.transmitterEmpty = false;
    if (this.loopback) {
      // The transmitter's output is wired to the receiver; nothing reaches the line.
      this.counters.txBytes.add();
      this.receiveOwnByte(value);
    } else {
      this.flushTransmitFifo();
      if (this.txCount === 0 && this.output.push(value)) {
        this.counters.txBytes.add();
      } else if (this.txCount < (this.fifoEnabled ? FIFO_SIZE : 1)) {
        this.txFifo[(this.txHead + this.txCount) % FIFO_SIZE] = value;
        this.txCount++;
      } else {
        // Written while THRE was 0 and the FIFO is full: lost, as on the chip.
        this.counters.txDropped.add();
      }
    }
    this.refreshTransmitter();
    this.updateIrq();
  }

  private writeIer(value: number): void {
    const before = this.ier;
    this.ier = value & 0x0f;
    if ((this.ier & IER.THR_EMPTY) !== 0 && (before & IER.THR_EMPTY) === 0) {
      // Enabling the THRE interrupt with THR empty raises it at once (SeaBIOS's port
      // detection and Linux's THRE test rely on this), even if an IIR read cleared it before.
      this.refreshTransmitter();
      if (this.transmitterEmpty) this.thrInterrupt = true;
    } else if ((this.ier & IER.THR_EMPTY) === 0) {
      this.thrInterrupt = false;
    }
    this.updateIrq();
  }

  private writeFcr(value: number): void {
    const enable = (value & FCR.ENABLE) !== 0;
    if (enable !== this.fifoEnabled) {
      // Switching between 16450 and FIFO mode empties both FIFOs.
      this.clearReceiveFifo();
      this.clearTransmitFifo();
      this.fifoEnabled = enable;
    }
    if (enable) {
      // The other FCR bits only take effect together with FIFO enable.
      if ((value & FCR.CLEAR_RX) !== 0) this.clearReceiveFifo();
      if ((value & FCR.CLEAR_TX) !== 0) this.clearTransmitFifo();
      this.triggerLevel = TRIGGER_LEVELS[value >>> 6];
    } else {
      this.triggerLevel = 1;
    }
    // Host bytes still queued arrive on the line after the clear.
    this.refillFromHost();
    this.refreshTransmitter();
    this.updateIrq();
  }

  private writeLcr(value: number): void {
    const before = this.lcr;
    this.lcr = value;
    if (this.loopback && (value & LCR.BREAK) !== 0 && (before & LCR.BREAK) === 0) {
      // Loopback: the receiver sees the line held at space, one break character.
      this.receiveOwnByte(0, true);
      this.updateIrq();
    }
    if (!this.dlab) this.notifyLineSettings();
  }

  private writeMcr(value: number): void {
    const wasLoopback = this.loopback;
    this.mcr = value & 0x1f;
    if (wasLoopback && !this.loopback) this.refillFromHost();
    this.updateModemInputs();
    const modem: ModemControl = {
      // In loopback the output pins are forced inactive.
      dtr: !this.loopback && (this.mcr & MCR.DTR) !== 0,
      rts: !this.loopback && (this.mcr & MCR.RTS) !== 0,
    };
    if (modem.dtr !== this.lastModem.dtr || modem.rts !== this.lastModem.rts) {
      this.lastModem = modem;
      this.notify({ type: 'serial-modem', port: this.port, modem });
    }
    this.refreshTransmitter();
    this.updateIrq();
  }

  // --- line settings ------------------------------------------------------------
  /** Settings are announced when DLAB is clear, i.e. once the guest has finished a divisor/format change. */
  private notifyLineSettings(): void {
    const divisor = (this.dlm << 8) | this.dll;
    if (divisor === 0) return; // the baud generator is stopped; nothing sensible to apply
    const lcr = this.lcr;
    const settings: LineSettings = {
      baud: Math.round(BASE_BAUD / divisor),
      dataBits: ((lcr & 0x03) + 5) as LineSettings['dataBits'],
      parity: parityOf(lcr),
      stopBits: (lcr & 0x04) !== 0 ? 2 : 1,
    };
    const last = this.lastSettings;
    if (last && last.baud === settings.baud && last.dataBits === settings.dataBits
      && last.parity === settings.parity && last.stopBits === settings.stopBits) return;
    this.lastSettings = settings;
    this.notify({ type: 'serial-line', port: this.port, settings: { ...settings } });
  }

  /** The line settings the guest last programmed (null before it has). */
  get lineSettings(): LineSettings | null {
    return this.lastSettings ? { ...this.lastSettings } : null;
  }

  // --- receive internals ----------------------------------------------------------
  private get receiveCapacity(): number {
    return this.fifoEnabled ? FIFO_SIZE : 1;
  }

  private pushReceived(entry: number): void {
    this.rxFifo[(this.rxHead + this.rxCount) % FIFO_SIZE] = entry;
    this.rxCount++;
    this.counters.rxBytes.add();
    if (this.rxCount === 1) this.revealTopError();
  }

  /** Moves queued host bytes into the FIFO while it has room (not in loopback: the line is disconnected). */
  private refillFromHost(): void {
    if (this.loopback) return;
    const capacity = this.receiveCapacity;
    while (this.rxCount < capacity && this.hostQueued > 0) {
      const chunk = this.hostChunks[0];
      this.pushReceived(chunk[this.hostChunkOffset++]);
      this.hostQueued--;
      if (this.hostChunkOffset >= chunk.length) {
        this.hostChunks.shift();
        this.hostChunkOffset = 0;
      }
    }
  }

  /** A character from our own transmitter (loopback): it can overrun like a line character. */
  private receiveOwnByte(value: number, isBreak = false): void {
    const entry = (value & 0xff) | (isBreak ? ENTRY_BREAK : 0);
    if (this.rxCount < this.receiveCapacity) {
      this.pushReceived(entry);
      return;
    }
    this.lineErrors |= LSR.OE;
    this.counters.overruns.add();
    if (!this.fifoEnabled) {
      // 16450 mode: the new character overwrites the unread one.
      this.rxFifo[this.rxHead] = entry;
      this.revealTopError();
    }
  }

  /** An error travels with its character and shows in LSR when that character is next to be read. */
  private revealTopError(): void {
    if (this.rxCount === 0) return;
    const entry = this.rxFifo[this.rxHead];
    if ((entry & ENTRY_BREAK) !== 0) {
      this.lineErrors |= LSR.BI;
      this.rxFifo[this.rxHead] = entry & 0xff;
    }
  }

  private fifoHoldsError(): boolean {
    for (let i = 0; i < this.rxCount; i++) {
      if ((this.rxFifo[(this.rxHead + i) % FIFO_SIZE] & ENTRY_BREAK) !== 0) return true;
    }
    return false;
  }

  private clearReceiveFifo(): void {
    this.rxHead = 0;
    this.rxCount = 0;
    this.lineErrors &= ~LSR.BI;
  }

  // --- transmit internals ---------------------------------------------------------
  private flushTransmitFifo(): void {
    while (this.txCount > 0 && this.output.push(this.txFifo[this.txHead])) {
      this.txHead = (this.txHead + 1) % FIFO_SIZE;
      this.txCount--;
      this.counters.txBytes.add();
    }
  }

  private clearTransmitFifo(): void {
    this.txHead = 0;
    this.txCount = 0;
  }

  /** Moves waiting bytes to the ring and recomputes THRE; THR becoming empty raises the THRE source. */
  private refreshTransmitter(): void {
    this.flushTransmitFifo();
    const empty = this.txCount === 0 && (this.loopback || this.output.free > 0);
    if (empty && !this.transmitterEmpty) this.thrInterrupt = true;
    this.transmitterEmpty = empty;
    if (!empty && !this.retryPending) {
      this.retryPending = true;
      this.scheduleRetry(() => {
        this.retryPending = false;
        this.refreshTransmitter();
        this.updateIrq();
      });
    }
  }

  // --- modem lines ------------------------------------------------------------------
  private updateModemInputs(): void {
    let inputs = this.externalInputs;
    if (this.loopback) {
      // Outputs feed inputs: RTS→CTS, DTR→DSR, OUT1→RI, OUT2→DCD.
      const m = this.mcr;
      inputs = ((m & MCR.RTS) ? MSR.CTS : 0) | ((m & MCR.DTR) ? MSR.DSR : 0) | ((m & MCR.OUT1) ? MSR.RI : 0) | ((m & MCR.OUT2) ? MSR.DCD : 0);
    }
    const changed = inputs ^ this.modemInputs;
    if (changed & MSR.CTS) this.modemDeltas |= MSR.DCTS;
    if (changed & MSR.DSR) this.modemDeltas |= MSR.DDSR;
    if (changed & MSR.DCD) this.modemDeltas |= MSR.DDCD;
    // TERI: the trailing edge of ring indicator only.
    if ((changed & MSR.RI) && (inputs & MSR.RI) === 0) this.modemDeltas |= MSR.TERI;
    this.modemInputs = inputs;
  }

  // --- interrupts -------------------------------------------------------------------
  /** The highest-priority pending source, as IIR bits 0..3. */
  private interruptId(): number {
    const ier = this.ier;
    if ((ier & IER.LINE_STATUS) !== 0 && (this.lineErrors & LINE_ERRORS) !== 0) return IIR.LINE_STATUS;
    if ((ier & IER.RX_DATA) !== 0 && this.rxCount > 0) {
      return this.fifoEnabled && this.rxCount < this.triggerLevel ? IIR.RX_TIMEOUT : IIR.RX_DATA;
    }
    if ((ier & IER.THR_EMPTY) !== 0 && this.thrInterrupt) return IIR.THR_EMPTY;
    if ((ier & IER.MODEM_STATUS) !== 0 && this.modemDeltas !== 0) return IIR.MODEM_STATUS;
    return IIR.NONE;
  }

  /**
   * The UART's INTR output reaches the PIC only through the buffer that OUT2 enables on
   * PC serial cards. In loopback the chip forces its OUT pins inactive, which disconnects
   * it too; the interrupt is still visible in IIR.
   */
  private updateIrq(): void {
    const gated = (this.mcr & (MCR.OUT2 | MCR.LOOP)) === MCR.OUT2;
    this.irq.set(gated && this.interruptId() !== IIR.NONE);
  }

  /** Registers and queues without side effects, for a stuck console's dump. */
  describeState(): string {
    const h = (v: number) => `0x${v.toString(16)}`;
    return `ier ${h(this.ier)} lcr ${h(this.lcr)} mcr ${h(this.mcr)} fcr ${this.fifoEnabled ? `on trigger ${this.triggerLevel}` : 'off'}`
      + ` pending ${h(this.interruptId())} irq ${this.irq.level ? 'high' : 'low'} rx fifo ${this.rxCount} host queue ${this.hostQueued}`
      + ` tx fifo ${this.txCount} thr ${this.transmitterEmpty ? 'empty' : 'busy'} thre source ${this.thrInterrupt ? 'set' : 'clear'}`
      + ` output ring free ${this.output.free} retry ${this.retryPending ? 'pending' : 'none'}`
      + ` line errors ${h(this.lineErrors)} rx ${this.counters.rxBytes.value} tx ${this.counters.txBytes.value}`;
  }

  /** Invariants checked by the fuzz test. */
  checkInvariants(): string | null {
    if (this.rxCount < 0 || this.rxCount > this.receiveCapacity) return `receive FIFO holds ${this.rxCount}`;
    if (this.txCount < 0 || this.txCount > FIFO_SIZE) return `transmit FIFO holds ${this.txCount}`;
    if (this.hostQueued < 0 || this.hostQueued > HOST_QUEUE_LIMIT) return `host queue holds ${this.hostQueued}`;
    const gated = (this.mcr & (MCR.OUT2 | MCR.LOOP)) === MCR.OUT2;
    if (this.irq.level !== (gated && this.interruptId() !== IIR.NONE)) return 'IRQ level disagrees with IIR';
    if ((this.ier & 0xf0) !== 0 || (this.mcr & 0xe0) !== 0) return 'reserved register bits set';
    return null;
  }
}

function parityOf(lcr: number): LineSettings['parity'] {
  if ((lcr & 0x08) === 0) return 'none';
  const even = (lcr & 0x10) !== 0;
  if ((lcr & 0x20) !== 0) return even ? 'space' : 'mark'; // stick parity
  return even ? 'even' : 'odd';
}

/** COM`index + 1` at its PC port and IRQ (COM1/COM3 share IRQ 4, COM2/COM4 IRQ 3). */
export function serialPortDevice(index: number): DeviceFactory {
  return (ctx) => {
    const { base, irq } = COM_PORTS[index];
    const name = `COM${index + 1}`;
    const uart = new Uart16550({
      port: index, name, output: ctx.serialRing(index), irq: ctx.irqPin(irq, name),
      notifyHost: (message) => ctx.notifyHost(message),
      scheduleRetry: (retry) => { ctx.setTimer(1, retry); },
      statistics: ctx.statistics,
    });
    return {
      name, instance: uart, pio: [{ base, length: 8, io: uart }], irqs: [irq], counters: { ...uart.counters },
      describeState: () => uart.describeState(),
      // Input and modem lines from the port's host backend (VmHost.sendSerialInput, sendModemStatus).
      hostMessages: {
        target: CHANNEL_TARGET.SERIAL + index,
        handle: (kind, payload) => {
          if (kind === SERIAL_KIND.INPUT) uart.receive(payload);
          else if (kind === SERIAL_KIND.MODEM_STATUS) {
            const lines = decodeModemStatus(payload);
            if (lines) uart.setModemStatus(lines);
          }
        },
      },
    };
  };
}
