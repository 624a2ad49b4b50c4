// A USB CDC-ACM serial port (CDC 1.2 and PSTN 1.2, "Abstract Control Model"), which Linux's
// cdc_acm driver shows as /dev/ttyACM<n>. Interface 0 (Communications, ACM) carries the class
// requests and a SERIAL_STATE notification endpoint (interrupt IN 0x83); interface 1 (Data)
// carries the bytes: bulk OUT 0x02 (guest to host) and bulk IN 0x81 (host to guest).
// The bytes meet a serial backend through a callback pair:
// - guest to host: options.onOutput(bytes) for every bulk OUT transfer; it returns false when the
//   backend cannot take them now (its channel is full), the transfer then waits (the guest's
//   writes block, as on a real line with flow control) until outputReady() is called;
// - host to guest: receive(bytes) buffers up to rxBufferSize bytes and returns how many it took;
//   options.onReceiveSpace() is called when a full buffer has room again.
// Line coding, DTR/RTS and breaks go to optional callbacks; setSerialState() sends DCD/DSR/RI.
// Runs on the machine thread.

import type { UsbInterfaceSpec } from './descriptors';
import { UsbDeviceBase, requestRecipient, type UsbControlResult, type UsbDataResult } from './usb-device-base';
import type { UsbSetup, UsbTransfer } from './usb-device';

export const CdcRequest = {
  sendEncapsulatedCommand: 0x00,
  getEncapsulatedResponse: 0x01,
  setLineCoding: 0x20,
  getLineCoding: 0x21,
  setControlLineState: 0x22,
  sendBreak: 0x23,
} as const;

export const ACM_DATA_IN = 0x81;
export const ACM_DATA_OUT = 0x02;
export const ACM_NOTIFY_IN = 0x83;
const COMM_INTERFACE = 0;
const DATA_INTERFACE = 1;

export interface LineCoding {
  /** Bits per second. */
  baud: number;
  /** 0: 1 stop bit, 1: 1.5, 2: 2. */
  stopBits: 0 | 1 | 2;
  /** 0 none, 1 odd, 2 even, 3 mark, 4 space. */
  parity: 0 | 1 | 2 | 3 | 4;
  /** 5, 6, 7, 8 or 16. */
  dataBits: number;
}

export interface SerialState {
  /** DCD (bRxCarrier). */
  dcd?: boolean;
  /** DSR (bTxCarrier). */
  dsr?: boolean;
  ring?: boolean;
  break?: boolean;
  framingError?: boolean;
  parityError?: boolean;
  overrun?: boolean;
}

export interface UsbSerialAcmOptions {
  name?: string;
  speed?: 'full' | 'high' | 'super';
  serial?: string;
  /** Guest-to-host bytes (a copy). false: not now; the transfer waits for outputReady(). */
  onOutput?: (bytes: Uint8Array) => boolean;
  /** A full receive buffer has room again. */
  onReceiveSpace?: () => void;
  onLineCoding?: (coding: LineCoding) => void;
  onControlLines?: (lines: { dtr: boolean; rts: boolean }) => void;
  /** SEND_BREAK: duration in ms, 0xffff until the next SEND_BREAK(0). */
  onBreak?: (ms: number) => void;
  /** Host-to-guest bytes held while the guest is not reading (default 64 KiB). */
  rxBufferSize?: number;
}

const DEFAULT_CODING: LineCoding = { baud: 9600, stopBits: 0, parity: 0, dataBits: 8 };
const NOTIFICATION_QUEUE_LIMIT = 8;

function dataInterfaces(speed: 'full' | 'high' | 'super'): UsbInterfaceSpec[] {
  const bulkPacket = speed === 'super' ? 1024 : speed === 'high' ? 512 : 64;
  // Interrupt interval: 16 frames at full speed, 2^(8-1) microframes (16 ms) above.
  const notifyInterval = speed === 'full' ? 16 : 8;
  return [
    {
      number: COMM_INTERFACE, class: 0x02, subclass: 0x02, protocol: 0x01,
      classDescriptors: [
        Uint8Array.of(5, 0x24, 0x00, 0x10, 0x01), // Header, CDC 1.10
        Uint8Array.of(5, 0x24, 0x01, 0x00, DATA_INTERFACE), // Call Management: none over the data interface
        Uint8Array.of(4, 0x24, 0x02, 0x06), // ACM: line coding/state requests, SERIAL_STATE, SEND_BREAK
        Uint8Array.of(5, 0x24, 0x06, COMM_INTERFACE, DATA_INTERFACE), // Union
      ],
      endpoints: [
        { number: ACM_NOTIFY_IN & 0x0f, in: true, kind: 'interrupt', maxPacketSize: 16, interval: notifyInterval },
      ],
    },
    {
      number: DATA_INTERFACE, class: 0x0a, subclass: 0, protocol: 0,
      endpoints: [
        { number: ACM_DATA_IN & 0x0f, in: true, kind: 'bulk', maxPacketSize: bulkPacket, interval: 0 },
        { number: ACM_DATA_OUT, in: false, kind: 'bulk', maxPacketSize: bulkPacket, interval: 0 },
      ],
    },
  ];
}

export class UsbSerialAcm extends UsbDeviceBase {
  private readonly options: UsbSerialAcmOptions;
  private coding: LineCoding = { ...DEFAULT_CODING };
  private dtr = false;
  private rts = false;
  private readonly rx: Uint8Array;
  private rxStart = 0;
  private rxLength = 0;
  /** receive() refused bytes: tell the backend when there is room. */
  private rxWasFull = false;
  private stateBits = 0;
  private readonly notifications: Uint8Array[] = [];

  constructor(options: UsbSerialAcmOptions = {}) {
    const speed = options.speed ?? 'full';
    super({
      name: options.name ?? 'usb-serial',
      speed,
      spec: {
        class: 0x02, subclass: 0, protocol: 0,
        vendorId: 0x1d6b,
        productId: 0x0104,
        deviceVersion: 0x0100,
        manufacturer: 'Porthole',
        product: 'Porthole USB Serial',
        serial: options.serial ?? '1',
        configurations: [{ value: 1, maxPowerMa: 100, interfaces: dataInterfaces(speed) }],
      },
    });
    this.options = options;
    const size = options.rxBufferSize ?? 65536;
    this.rx = new Uint8Array(Math.max(1, Math.min(1 << 24, Math.floor(size))));
  }

  get lineCoding(): LineCoding {
    return { ...this.coding };
  }
  get controlLines(): { dtr: boolean; rts: boolean } {
    return { dtr: this.dtr, rts: this.rts };
  }
  /** Bytes receive() can take now. */
  get receiveSpace(): number {
    return this.rx.length - this.rxLength;
  }

  /** Host-to-guest bytes; returns how many were taken (the rest: wait for onReceiveSpace). */
  receive(bytes: Uint8Array): number {
    const n = Math.min(bytes.length, this.rx.length - this.rxLength);
    for (let i = 0; i < n; i++) this.rx[(this.rxStart + this.rxLength + i) % this.rx.length] = bytes[i];
    this.rxLength += n;
    if (n < bytes.length) this.rxWasFull = true;
    if (n > 0) this.kick(ACM_DATA_IN);
    return n;
  }

  /** The backend can take output again: retry a waiting bulk OUT transfer. */
  outputReady(): void {
    this.kick(ACM_DATA_OUT);
  }

  /** Modem status for the guest (sent as a SERIAL_STATE notification when it changes). */
  setSerialState(state: SerialState): void {
    const bits = (state.dcd ? 1 : 0) | (state.dsr ? 2 : 0) | (state.break ? 4 : 0) | (state.ring ? 8 : 0) |
      (state.framingError ? 16 : 0) | (state.parityError ? 32 : 0) | (state.overrun ? 64 : 0);
    if (bits === this.stateBits) return;
    this.stateBits = bits;
    if (this.configurationValue === 0) return;
    const n = Uint8Array.of(0xa1, 0x20, 0, 0, COMM_INTERFACE, 0, 2, 0, bits, 0);
    if (this.notifications.length >= NOTIFICATION_QUEUE_LIMIT) this.notifications[this.notifications.length - 1] = n;
    else this.notifications.push(n);
    this.kick(ACM_NOTIFY_IN);
  }

  protected override onReset(): void {
    this.coding = { ...DEFAULT_CODING };
    this.dtr = false;
    this.rts = false;
    this.notifications.length = 0;
    this.rxStart = 0;
    this.rxLength = 0;
    this.spaceAgain();
  }

  protected override onConfigurationChanged(): void {
    this.notifications.length = 0;
  }

  protected override handleControl(setup: UsbSetup, outData: Uint8Array | null): UsbControlResult {
    const kind = (setup.requestType >>> 5) & 3;
    if (kind !== 1 || requestRecipient(setup) !== 1 || setup.index !== COMM_INTERFACE) return 'stall';
    if (this.configurationValue === 0) return 'stall';
    const dirIn = (setup.requestType & 0x80) !== 0;
    switch (setup.request) {
      case CdcRequest.setLineCoding: {
        if (dirIn || setup.value !== 0 || setup.length !== 7 || !outData || outData.length < 7) return 'stall';
        const baud = (outData[0] | (outData[1] << 8) | (outData[2] << 16) | (outData[3] << 24)) >>> 0;
        const stopBits = outData[4];
        const parity = outData[5];
        const dataBits = outData[6];
        if (baud === 0 || stopBits > 2 || parity > 4 || ![5, 6, 7, 8, 16].includes(dataBits)) return 'stall';
        this.coding = { baud, stopBits: stopBits as LineCoding['stopBits'], parity: parity as LineCoding['parity'], dataBits };
        this.callback(() => this.options.onLineCoding?.({ ...this.coding }));
        return 'ok';
      }
      case CdcRequest.getLineCoding: {
        if (!dirIn || setup.value !== 0 || setup.length !== 7) return 'stall';
        const b = this.coding.baud;
        return Uint8Array.of(b & 0xff, (b >>> 8) & 0xff, (b >>> 16) & 0xff, b >>> 24, this.coding.stopBits, this.coding.parity, this.coding.dataBits);
      }
      case CdcRequest.setControlLineState: {
        if (dirIn || setup.length !== 0 || setup.value > 3) return 'stall';
        this.dtr = (setup.value & 1) !== 0;
        this.rts = (setup.value & 2) !== 0;
        this.callback(() => this.options.onControlLines?.({ dtr: this.dtr, rts: this.rts }));
        return 'ok';
      }
      case CdcRequest.sendBreak: {
        if (dirIn || setup.length !== 0) return 'stall';
        this.callback(() => this.options.onBreak?.(setup.value));
        return 'ok';
      }
      default:
        return 'stall';
    }
  }

  protected override handleData(transfer: UsbTransfer, address: number): UsbDataResult {
    if (address === ACM_DATA_OUT) {
      if (transfer.data.length === 0) return 0;
      const onOutput = this.options.onOutput;
      let taken = true;
      if (onOutput) {
        try {
          taken = onOutput(Uint8Array.from(transfer.data));
        } catch (err) {
          this.log(`output callback: ${(err as Error).message}`);
        }
      }
      return taken === false ? 'pending' : transfer.data.length;
    }
    if (address === ACM_DATA_IN) {
      if (this.rxLength === 0) return 'pending';
      const n = Math.min(transfer.data.length, this.rxLength);
      for (let i = 0; i < n; i++) transfer.data[i] = this.rx[(this.rxStart + i) % this.rx.length];
      this.rxStart = (this.rxStart + n) % this.rx.length;
      this.rxLength -= n;
      this.spaceAgain();
      return n;
    }
    if (address === ACM_NOTIFY_IN) {
      const n = this.notifications[0];
      if (!n) return 'pending';
      if (transfer.data.length < n.length) return 'babble';
      this.notifications.shift();
      transfer.data.set(n);
      return n.length;
    }
    return 'stall';
  }

  private spaceAgain(): void {
    if (!this.rxWasFull || this.rxLength >= this.rx.length) return;
    this.rxWasFull = false;
    this.callback(() => this.options.onReceiveSpace?.());
  }

  private callback(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.log(`callback: ${(err as Error).message}`);
    }
  }
}
