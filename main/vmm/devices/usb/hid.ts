// UsbHidDevice: the HID class part shared by the keyboard and the tablet (HID 1.11).
// One interface (number 0) with one interrupt IN endpoint (0x81); no report IDs.
// - GET_DESCRIPTOR(HID / REPORT) asked of the interface;
// - GET_REPORT (input: the current state; output: the last output report), SET_REPORT (output);
// - GET/SET_IDLE: with a nonzero idle rate and a clock (options.timers), the current report is
//   sent again when nothing changed for that long (SeaBIOS's key repeat counts on it); Linux
//   sets idle 0: reports on change only. Without a clock, reports go out on change only;
// - GET/SET_PROTOCOL on a boot interface (subclass 1); other interfaces STALL them.
// The interrupt IN endpoint sends the subclass's next queued report, or stays pending (a NAK)
// while there is none; a subclass calls reportQueued() when it queued one.
// Runs on the machine thread.

import type { UsbConfigurationSpec } from './descriptors';
import { UsbDeviceBase, requestRecipient, type UsbControlResult, type UsbDataResult } from './usb-device-base';
import type { UsbSetup, UsbTransfer } from './usb-device';

export const HidRequest = {
  getReport: 0x01,
  getIdle: 0x02,
  getProtocol: 0x03,
  setReport: 0x09,
  setIdle: 0x0a,
  setProtocol: 0x0b,
} as const;

export const HidDescriptorType = { hid: 0x21, report: 0x22, physical: 0x23 } as const;
export const HidReportType = { input: 1, output: 2, feature: 3 } as const;
export const HidProtocol = { boot: 0, report: 1 } as const;

/** The interrupt IN endpoint's address. */
export const HID_IN_ENDPOINT = 0x81;

/** The HID descriptor (HID 1.11 6.2.1) naming one report descriptor. */
export function hidDescriptor(reportDescriptorLength: number, countryCode = 0): Uint8Array {
  return Uint8Array.of(
    9, HidDescriptorType.hid, 0x11, 0x01, countryCode, 1,
    HidDescriptorType.report, reportDescriptorLength & 0xff, reportDescriptorLength >>> 8,
  );
}

/** The machine thread's clock and timers (MachineTimers.set and monotonicMs fit). */
export interface HidTimers {
  /** Milliseconds on a monotonic clock. */
  now(): number;
  /** Runs fn once after about delayMs; returns a function that cancels it. */
  set(delayMs: number, fn: () => void): () => void;
}

export interface UsbHidDeviceOptions {
  name: string;
  speed: 'full' | 'high';
  vendorId: number;
  productId: number;
  product: string;
  serial?: string;
  /** bInterfaceSubClass: 1 for a boot interface. */
  subclass: number;
  /** bInterfaceProtocol: 1 keyboard, 2 mouse (boot interfaces), else 0. */
  protocol: number;
  reportDescriptor: Uint8Array;
  /** wMaxPacketSize of the interrupt IN endpoint (at least the input report's length). */
  maxPacketSize: number;
  /** Default idle rate (4 ms units; 0: report on change only). */
  defaultIdle: number;
  /** For idle-rate repeats; without it a nonzero idle rate is kept but not acted on. */
  timers?: HidTimers;
}

export abstract class UsbHidDevice extends UsbDeviceBase {
  protected readonly reportDescriptor: Uint8Array;
  private readonly bootInterface: boolean;
  private readonly defaultIdle: number;
  private protocolValue: number = HidProtocol.report;
  private idleValue: number;
  private readonly timers?: HidTimers;
  /** When the interrupt IN endpoint last sent a report (timers.now()). */
  private lastSent = -Infinity;
  private cancelIdleTimer: (() => void) | null = null;

  constructor(options: UsbHidDeviceOptions) {
    const configuration: UsbConfigurationSpec = {
      value: 1,
      maxPowerMa: 100,
      remoteWakeup: true,
      interfaces: [
        {
          number: 0,
          class: 3,
          subclass: options.subclass,
          protocol: options.protocol,
          classDescriptors: [hidDescriptor(options.reportDescriptor.length)],
          endpoints: [
            {
              number: HID_IN_ENDPOINT & 0x0f,
              in: true,
              kind: 'interrupt',
              maxPacketSize: options.maxPacketSize,
              // Full speed: 10 frames (10 ms). High speed: 2^(7-1) microframes (8 ms).
              interval: options.speed === 'high' ? 7 : 10,
            },
          ],
        },
      ],
    };
    super({
      name: options.name,
      speed: options.speed,
      spec: {
        class: 0, subclass: 0, protocol: 0,
        // Full speed EP0 packets of 8 bytes like most real HID devices; high speed requires 64.
        maxPacketSize0: options.speed === 'high' ? 64 : 8,
        vendorId: options.vendorId,
        productId: options.productId,
        deviceVersion: 0x0100,
        manufacturer: 'Porthole',
        product: options.product,
        serial: options.serial ?? '1',
        configurations: [configuration],
      },
    });
    this.reportDescriptor = options.reportDescriptor;
    this.bootInterface = options.subclass === 1;
    this.defaultIdle = options.defaultIdle;
    this.idleValue = options.defaultIdle;
    this.timers = options.timers;
  }

  /** 0: boot protocol, 1: report protocol. */
  get protocol(): number {
    return this.protocolValue;
  }
  /** The idle rate the guest set, in 4 ms units (0: infinite). */
  get idle(): number {
    return this.idleValue;
  }
  get configured(): boolean {
    return this.configurationValue !== 0;
  }

  /** The next report to send on the interrupt IN endpoint, removed from the queue; null: nothing new. */
  protected abstract takeReport(): Uint8Array | null;
  /** The report describing the current state (GET_REPORT(input)). */
  protected abstract currentReport(): Uint8Array;
  /** The last output report (GET_REPORT(output)); null: the device has none. */
  protected outputReport(): Uint8Array | null {
    return null;
  }
  /** SET_REPORT(output); false: STALL. */
  protected setOutputReport(_data: Uint8Array): boolean {
    return false;
  }
  /** Drops queued reports (unconfigured, reset): a guest that was not listening gets no stale input. */
  protected abstract clearQueue(): void;

  /** A report was queued: complete a waiting IN transfer, and ask for a remote wake-up. */
  protected reportQueued(): void {
    this.kick(HID_IN_ENDPOINT);
    this.requestWakeup();
  }

  protected override onReset(): void {
    this.protocolValue = HidProtocol.report;
    this.idleValue = this.defaultIdle;
    this.stopIdleTimer();
    this.clearQueue();
  }

  protected override onDetach(): void {
    this.stopIdleTimer();
  }

  protected override onConfigurationChanged(_value: number): void {
    this.stopIdleTimer();
    this.lastSent = -Infinity;
    this.clearQueue();
  }

  protected override handleData(transfer: UsbTransfer, address: number): UsbDataResult {
    if (address !== HID_IN_ENDPOINT) return 'stall';
    const report = this.takeReport();
    if (report) return this.send(transfer, report);
    if (this.idleValue > 0 && this.timers) {
      // Idle rate: the unchanged report again once idle * 4 ms passed since the last one.
      const due = this.lastSent + this.idleValue * 4;
      const now = this.timers.now();
      if (now >= due) return this.send(transfer, this.currentReport());
      this.armIdleTimer(due - now);
    }
    return 'pending';
  }

  private send(transfer: UsbTransfer, report: Uint8Array): UsbDataResult {
    if (report.length > transfer.data.length) return 'babble';
    transfer.data.set(report);
    if (this.timers) this.lastSent = this.timers.now();
    return report.length;
  }

  private armIdleTimer(delayMs: number): void {
    if (this.cancelIdleTimer || !this.timers) return;
    this.cancelIdleTimer = this.timers.set(delayMs, () => {
      this.cancelIdleTimer = null;
      this.kick(HID_IN_ENDPOINT);
    });
  }

  private stopIdleTimer(): void {
    const cancel = this.cancelIdleTimer;
    this.cancelIdleTimer = null;
    cancel?.();
  }

  protected override handleControl(setup: UsbSetup, outData: Uint8Array | null): UsbControlResult {
    if (requestRecipient(setup) !== 1 || setup.index !== 0) return 'stall'; // interface 0 only
    const kind = (setup.requestType >>> 5) & 3;
    const dirIn = (setup.requestType & 0x80) !== 0;
    if (kind === 0) {
      // Standard GET_DESCRIPTOR of the interface: the HID class descriptors.
      if (setup.request !== 0x06 || !dirIn) return 'stall';
      const type = setup.value >>> 8;
      if ((setup.value & 0xff) !== 0) return 'stall';
      if (type === HidDescriptorType.report) return this.reportDescriptor;
      if (type === HidDescriptorType.hid) return hidDescriptor(this.reportDescriptor.length);
      return 'stall';
    }
    if (kind !== 1) return 'stall';
    if (!this.configured) return 'stall';
    const reportId = setup.value & 0xff;
    const reportType = setup.value >>> 8;
    switch (setup.request) {
      case HidRequest.getReport: {
        if (!dirIn || reportId !== 0) return 'stall';
        if (reportType === HidReportType.input) return this.currentReport();
        if (reportType === HidReportType.output) return this.outputReport() ?? 'stall';
        return 'stall';
      }
      case HidRequest.setReport: {
        if (dirIn || reportId !== 0 || reportType !== HidReportType.output || !outData || outData.length === 0) {
          return 'stall';
        }
        return this.setOutputReport(outData) ? 'ok' : 'stall';
      }
      case HidRequest.getIdle: {
        if (!dirIn || reportId !== 0 || setup.length !== 1 || setup.value > 0xff) return 'stall';
        return Uint8Array.of(this.idleValue);
      }
      case HidRequest.setIdle: {
        if (dirIn || reportId !== 0 || setup.length !== 0) return 'stall';
        this.idleValue = setup.value >>> 8;
        // A waiting transfer is looked at again under the new rate.
        this.stopIdleTimer();
        this.kick(HID_IN_ENDPOINT);
        return 'ok';
      }
      case HidRequest.getProtocol: {
        if (!this.bootInterface || !dirIn || setup.value !== 0 || setup.length !== 1) return 'stall';
        return Uint8Array.of(this.protocolValue);
      }
      case HidRequest.setProtocol: {
        if (!this.bootInterface || dirIn || setup.length !== 0 || setup.value > 1) return 'stall';
        this.protocolValue = setup.value;
        this.onProtocolChanged();
        return 'ok';
      }
      default:
        return 'stall';
    }
  }

  /** After SET_PROTOCOL. */
  protected onProtocolChanged(): void {}
}
