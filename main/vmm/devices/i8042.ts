// The i8042 PS/2 controller (ports 0x60 data, 0x64 status/command) with a PS/2
// keyboard on its first port and an empty second (aux) port.
//
// What firmware and Linux probe, and how we answer so both finish quickly:
// - SeaBIOS ps2port.c: flush, 0xAA self test (0x55), 0xAB keyboard test (0x00), keyboard
//   reset 0xFF (0xFA 0xAA), 0xF5, 0xF0 0x02, 0xF4, each between command-byte writes that
//   mask the interrupts and enable only the port it talks to.
// - Linux i8042.c: two equal command-byte reads, 0xAA, aux loopback 0xD3 (echo, and IRQ 12
//   delivery when the aux interrupt is on), 0xA7/0xA8 checked through the command byte,
//   then atkbd sends 0xF2 (identify) and friends to the keyboard.
// - Bytes sent to the aux device (0xD4) get 0xFE with the aux and timeout status bits,
//   which is what a controller reports when no device answers: SeaBIOS sees a NAK on the
//   aux port and Linux's serio layer sees SERIO_TIMEOUT, so neither waits out its timeout.
//
// A20: KVM guests always run with A20 enabled and we do not emulate the address wrap
// (nothing after DOS needs it, and unmapping the wrap alias would cost a memory slot
// per toggle). The gate's state is recorded and read back so probes see what they wrote.
import { counter, type Counter, type DeviceFactory, type IoDevice, privateStatistics } from './device';
import type { StatsRegistry } from '../shared/stats';
import { IAPC_BOOT_ARCH } from '../platform/acpi';

/** Status register bits (port 0x64 read). */
export const STATUS = {
  OUTPUT_FULL: 0x01,
  INPUT_FULL: 0x02,
  SYSTEM_FLAG: 0x04,
  LAST_WAS_COMMAND: 0x08,
  NOT_INHIBITED: 0x10,
  AUX_DATA: 0x20,
  TIMEOUT: 0x40,
  PARITY_ERROR: 0x80,
} as const;

/** Command byte (controller RAM byte 0) bits. */
export const CTR = {
  KBD_INT: 0x01,
  AUX_INT: 0x02,
  SYSTEM_FLAG: 0x04,
  IGNORE_KEYLOCK: 0x08,
  KBD_DISABLE: 0x10,
  AUX_DISABLE: 0x20,
  TRANSLATE: 0x40,
} as const;

/** Output port bits (0xD0/0xD1). */
export const OUTPUT_PORT = {
  RESET_HIGH: 0x01,
  A20: 0x02,
  KBD_OUTPUT_FULL: 0x10,
  AUX_OUTPUT_FULL: 0x20,
  /** Keyboard clock/data and aux clock/data lines, high when idle. */
  IDLE_LINES: 0xcc,
} as const;

export const KBD_IRQ = 1;
export const AUX_IRQ = 12;

const ACK = 0xfa;
const RESEND = 0xfe;
const BAT_OK = 0xaa;
/** Bytes a PS/2 keyboard buffers before it drops input (as QEMU's 16-byte queue). */
const KEYBOARD_QUEUE_LIMIT = 16;
/** Controller responses waiting for the output buffer; a guest can queue at most a few. */
const CONTROLLER_QUEUE_LIMIT = 16;

/** What the controller needs from the machine. */
export interface I8042Host {
  setIrq(gsi: number, level: boolean): void;
  requestReset(): void;
}

type Source = 'controller' | 'keyboard' | 'aux';

interface QueuedByte {
  value: number;
  /** Status bits that go with this byte (aux data, timeout). */
  status: number;
  /** Which interrupt it raises: keyboard (IRQ 1) or aux (IRQ 12). */
  aux: boolean;
}

/** A PS/2 keyboard's command side: it answers what firmware and drivers send. */
export class Ps2Keyboard {
  readonly queue: number[] = [];
  scanning = true;
  scancodeSet = 2;
  leds = 0;
  typematic = 0x2b;
  private pendingCommand = -1;
  private lastSent = ACK;

  /** `dropped` counts bytes lost to a full queue. */
  constructor(private readonly translated: () => boolean, private readonly dropped: Counter) {}

  reset(): void {
    this.queue.length = 0;
    this.pendingCommand = -1;
    this.scanning = true;
    this.scancodeSet = 2;
    this.leds = 0;
    this.typematic = 0x2b;
  }

  private send(...bytes: number[]): void {
    for (const b of bytes) {
      if (this.queue.length >= KEYBOARD_QUEUE_LIMIT) {
        this.dropped.add();
        continue;
      }
      this.queue.push(b);
      this.lastSent = b;
    }
  }

  /** A byte the host wrote to the keyboard through port 0x60. */
  write(value: number): void {
    const pending = this.pendingCommand;
    if (pending >= 0) {
      this.pendingCommand = -1;
      if (this.parameter(pending, value)) return;
      // Not a valid parameter: a real keyboard treats it as a new command.
    }
    this.command(value);
  }

  /** Returns false if `value` is a command rather than the awaited parameter. */
  private parameter(command: number, value: number): boolean {
    switch (command) {
      case 0xed: // set LEDs
        if (value & 0x80 && value !== 0x80) return false;
        this.leds = value & 0x07;
        this.send(ACK);
        return true;
      case 0xf3: // typematic rate/delay
        if (value & 0x80) return false;
        this.typematic = value;
        this.send(ACK);
        return true;
      case 0xf0: // scancode set
        if (value === 0) {
          // The set number goes through the controller's translation like any other byte.
          const reported = this.translated() ? [0, 0x43, 0x41, 0x3f][this.scancodeSet] : this.scancodeSet;
          this.send(ACK, reported);
        } else if (value >= 1 && value <= 3) {
          this.scancodeSet = value;
          this.send(ACK);
        } else {
          this.send(RESEND);
        }
        return true;
      default:
        return false;
    }
  }

  private command(value: number): void {
    switch (value) {
      case 0xed:
      case 0xf3:
      case 0xf0:
        this.pendingCommand = value;
        this.send(ACK);
        return;
      case 0xee: // echo
        this.send(0xee);
        return;
      case 0xf2: // identify: MF2 keyboard; 0x83 reads as 0x41 through translation
        this.send(ACK, 0xab, this.translated() ? 0x41 : 0x83);
        return;
      case 0xf4: // enable scanning
        this.scanning = true;
        this.send(ACK);
        return;
      case 0xf5: // disable scanning and restore defaults
        this.scanning = false;
        this.scancodeSet = 2;
        this.typematic = 0x2b;
        this.send(ACK);
        return;
      case 0xf6: // restore defaults
        this.scancodeSet = 2;
        this.typematic = 0x2b;
        this.send(ACK);
        return;
      case 0xf7: case 0xf8: case 0xf9: case 0xfa: case 0xfb: case 0xfc: case 0xfd:
        // Scancode set 3 key types: accepted and ignored.
        this.send(ACK);
        return;
      case 0xfe: // resend the last byte
        this.send(this.lastSent);
        return;
      case 0xff: // reset and self test (basic assurance test)
        this.reset();
        this.send(ACK, BAT_OK);
        return;
      default:
        this.send(RESEND);
    }
  }
}

export class I8042 {
  readonly name = 'i8042';
  /** Port 0x60. */
  readonly dataPort: IoDevice;
  /** Port 0x64. */
  readonly commandPort: IoDevice;
  readonly keyboard: Ps2Keyboard;

  private commandByte = CTR.KBD_INT | CTR.AUX_INT;
  private status: number = STATUS.NOT_INHIBITED;
  /** Byte in the output buffer (valid while STATUS.OUTPUT_FULL is set). */
  private output = 0;
  private outputIsAux = false;
  /** Controller command waiting for its data byte on port 0x60, or -1. */
  private pendingCommand = -1;
  private readonly controllerQueue: QueuedByte[] = [];
  private a20Gate = true;
  private kbdIrqLevel = false;
  private auxIrqLevel = false;
  /** Writes to the aux device (none is attached, each one times out), reset pulses, keyboard bytes lost. */
  readonly counters: { auxWrites: Counter; resets: Counter; keyboardDropped: Counter };

  constructor(private readonly host: I8042Host, statistics: StatsRegistry = privateStatistics()) {
    this.counters = {
      auxWrites: counter(statistics, this.name, 'aux-writes'),
      resets: counter(statistics, this.name, 'resets'),
      keyboardDropped: counter(statistics, this.name, 'keyboard-dropped'),
    };
    this.keyboard = new Ps2Keyboard(() => (this.commandByte & CTR.TRANSLATE) !== 0, this.counters.keyboardDropped);
    this.dataPort = {
      name: 'i8042 (0x60)',
      read: () => this.readData(),
      write: (_offset, _size, value) => this.writeData(value & 0xff),
    };
    this.commandPort = {
      name: 'i8042 (0x64)',
      read: () => this.status,
      write: (_offset, _size, value) => this.writeCommand(value & 0xff),
    };
  }

  /** The A20 gate as the guest last set it through the output port (not emulated: see top). */
  get a20(): boolean {
    return this.a20Gate;
  }
  get commandByteValue(): number {
    return this.commandByte;
  }
  get statusValue(): number {
    return this.status;
  }

  // --- port 0x60 ------------------------------------------------------------------
  private readData(): number {
    const value = this.output;
    if (this.status & STATUS.OUTPUT_FULL) {
      this.status &= ~(STATUS.OUTPUT_FULL | STATUS.AUX_DATA | STATUS.TIMEOUT | STATUS.PARITY_ERROR);
      // Drop the line first so the next byte (if any) gives the edge-triggered PIC a new edge.
      this.updateIrqs();
      this.refill();
    }
    return value;
  }

  private writeData(value: number): void {
    this.status &= ~STATUS.LAST_WAS_COMMAND;
    const command = this.pendingCommand;
    this.pendingCommand = -1;
    if (command < 0) {
      // Writing to the keyboard enables its interface, as on real controllers.
      this.commandByte &= ~CTR.KBD_DISABLE;
      this.keyboard.write(value);
      this.refill();
      return;
    }
    if (command >= 0x60 && command <= 0x7f) {
      // Only RAM byte 0 (the command byte) means anything; other RAM bytes are scratch.
      if (command === 0x60) this.setCommandByte(value);
    } else if (command === 0xd1) {
      this.writeOutputPort(value);
    } else if (command === 0xd2) {
      this.queueController(value, 0, false);
    } else if (command === 0xd3) {
      this.queueController(value, STATUS.AUX_DATA, true);
    } else if (command === 0xd4) {
      this.counters.auxWrites.add();
      this.queueController(RESEND, STATUS.AUX_DATA | STATUS.TIMEOUT, true);
    }
    this.refill();
  }

  // --- port 0x64 ------------------------------------------------------------------
  private writeCommand(command: number): void {
    this.status |= STATUS.LAST_WAS_COMMAND;
    // A new command replaces one still waiting for its data byte.
    this.pendingCommand = -1;
    if (command === 0x20) {
      this.queueController(this.commandByte, 0, false);
    } else if (command > 0x20 && command <= 0x3f) {
      this.queueController(0, 0, false);
    } else if ((command >= 0x60 && command <= 0x7f) || (command >= 0xd1 && command <= 0xd4)) {
      this.pendingCommand = command;
    } else {
      switch (command) {
        case 0xa4: // password installed? no
          this.queueController(0xf1, 0, false);
          break;
        case 0xa7:
          this.commandByte |= CTR.AUX_DISABLE;
          break;
        case 0xa8:
          this.commandByte &= ~CTR.AUX_DISABLE;
          break;
        case 0xa9: // aux interface test: no fault on the lines
          this.queueController(0x00, 0, false);
          break;
        case 0xaa: // controller self test
          this.commandByte |= CTR.SYSTEM_FLAG;
          this.status |= STATUS.SYSTEM_FLAG;
          this.queueController(0x55, 0, false);
          break;
        case 0xab: // keyboard interface test
          this.queueController(0x00, 0, false);
          break;
        case 0xad:
          this.commandByte |= CTR.KBD_DISABLE;
          break;
        case 0xae:
          this.commandByte &= ~CTR.KBD_DISABLE;
          break;
        case 0xc0: // input port: keyboard not inhibited
          this.queueController(0x80, 0, false);
          break;
        case 0xd0:
          this.queueController(this.outputPort(), 0, false);
          break;
        case 0xdd: // A20 off (some chipsets)
          this.a20Gate = false;
          break;
        case 0xdf: // A20 on
          this.a20Gate = true;
          break;
        case 0xe0: // test inputs: clock and data low
          this.queueController(0x00, 0, false);
          break;
        default:
          // 0xF0..0xFF pulse the output port lines whose bit is 0 in the low nibble;
          // bit 0 is the CPU reset line, so every even value resets (0xFE is the usual one).
          if (command >= 0xf0 && (command & 1) === 0) this.pulseReset();
          // Other commands are vendor specific and ignored.
          break;
      }
    }
    this.refill();
  }

  private setCommandByte(value: number): void {
    this.commandByte = value & 0x7f;
    if (value & CTR.SYSTEM_FLAG) this.status |= STATUS.SYSTEM_FLAG;
    else this.status &= ~STATUS.SYSTEM_FLAG;
  }

  private outputPort(): number {
    let v = OUTPUT_PORT.RESET_HIGH | OUTPUT_PORT.IDLE_LINES;
    if (this.a20Gate) v |= OUTPUT_PORT.A20;
    if (this.status & STATUS.OUTPUT_FULL) v |= this.outputIsAux ? OUTPUT_PORT.AUX_OUTPUT_FULL : OUTPUT_PORT.KBD_OUTPUT_FULL;
    return v;
  }

  private writeOutputPort(value: number): void {
    this.a20Gate = (value & OUTPUT_PORT.A20) !== 0;
    // The reset line is active low.
    if ((value & OUTPUT_PORT.RESET_HIGH) === 0) this.pulseReset();
  }

  private pulseReset(): void {
    this.counters.resets.add();
    this.host.requestReset();
  }

  // --- output buffer and interrupts --------------------------------------------------
  private queueController(value: number, status: number, aux: boolean): void {
    if (this.controllerQueue.length >= CONTROLLER_QUEUE_LIMIT) return;
    this.controllerQueue.push({ value: value & 0xff, status, aux });
  }

  /** Moves the next waiting byte into an empty output buffer and updates the IRQ lines. */
  private refill(): void {
    if (!(this.status & STATUS.OUTPUT_FULL)) {
      const next = this.nextByte();
      if (next) {
        this.output = next.value;
        this.outputIsAux = next.aux;
        this.status = (this.status & ~(STATUS.AUX_DATA | STATUS.TIMEOUT | STATUS.PARITY_ERROR)) | STATUS.OUTPUT_FULL | next.status;
      }
    }
    this.updateIrqs();
  }

  private nextByte(): QueuedByte | null {
    // Controller responses first: firmware reads them right after the command.
    const fromController = this.controllerQueue.shift();
    if (fromController) return fromController;
    // A device's bytes wait while its interface is disabled.
    if (!(this.commandByte & CTR.KBD_DISABLE) && this.keyboard.queue.length > 0) {
      return { value: this.keyboard.queue.shift() as number, status: 0, aux: false };
    }
    return null;
  }

  private updateIrqs(): void {
    const full = (this.status & STATUS.OUTPUT_FULL) !== 0;
    const kbd = full && !this.outputIsAux && (this.commandByte & CTR.KBD_INT) !== 0;
    const aux = full && this.outputIsAux && (this.commandByte & CTR.AUX_INT) !== 0;
    if (kbd !== this.kbdIrqLevel) {
      this.kbdIrqLevel = kbd;
      this.host.setIrq(KBD_IRQ, kbd);
    }
    if (aux !== this.auxIrqLevel) {
      this.auxIrqLevel = aux;
      this.host.setIrq(AUX_IRQ, aux);
    }
  }

  /** The interrupt lines as the controller drives them (for tests and statistics). */
  get irqLevels(): { kbd: boolean; aux: boolean } {
    return { kbd: this.kbdIrqLevel, aux: this.auxIrqLevel };
  }
}

export const i8042Device: DeviceFactory = (ctx) => {
  const kbc = new I8042(ctx, ctx.statistics);
  return {
    name: kbc.name, instance: kbc,
    pio: [{ base: 0x60, length: 1, io: kbc.dataPort }, { base: 0x64, length: 1, io: kbc.commandPort }],
    irqs: [KBD_IRQ, AUX_IRQ],
    tables: () => ({ bootArch: IAPC_BOOT_ARCH.I8042 }),
    counters: kbc.counters,
  };
};
