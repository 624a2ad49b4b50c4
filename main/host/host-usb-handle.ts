// One opened host USB device, as the passthrough needs it: the calls it makes, behind an
// interface so the passthrough logic is tested without a USB bus (test/unit uses a fake).
// NodeUsbHandle is the real one, on node-usb (libusb, usbfs underneath). Its completions
// arrive on the thread that opened it (the VM host thread), never the machine thread.
import type { usb as UsbModule } from 'usb';
import type { HostUsbDeviceInfo } from './usb-inventory';
import { openErrorSentence } from './usb-inventory';
import { statusOfUrb, UsbdevfsDevice } from '../../native/usbdevfs';

export type HostTransferType = 'control' | 'isochronous' | 'bulk' | 'interrupt';

/** How a host transfer ended (libusb's transfer statuses, named). */
export type HostTransferStatus = 'ok' | 'stall' | 'babble' | 'no-device' | 'cancelled' | 'error';

export type HostTransferDone = (status: HostTransferStatus, actual: number) => void;
/** An isochronous URB's end: the URB's status, then each packet's bytes moved and status. */
export type HostIsoDone = (status: HostTransferStatus, packets: { actual: number; status: HostTransferStatus; errno?: number }[], data: Uint8Array) => void;
export type HostCallback = (error: Error | null) => void;

export interface HostUsbHandle {
  /** The active configuration's value (0: unconfigured). */
  configurationValue(): number;
  /** bInterfaceNumber of each interface of the active configuration. */
  interfaceNumbers(): number[];
  kernelDriverActive(itf: number): boolean;
  detachKernelDriver(itf: number): void;
  attachKernelDriver(itf: number): void;
  claimInterface(itf: number): void;
  releaseInterface(itf: number, done: HostCallback): void;
  setConfiguration(value: number, done: HostCallback): void;
  setInterface(itf: number, alternate: number, done: HostCallback): void;
  clearHalt(endpointAddress: number, done: HostCallback): void;
  reset(done: HostCallback): void;
  /**
   * Starts a transfer. Control: `buffer` is the 8 SETUP bytes then the data stage, and `actual`
   * counts data-stage bytes only. Returns a function that cancels it (done then says 'cancelled').
   */
  submit(endpointAddress: number, type: Exclude<HostTransferType, 'isochronous'>, buffer: Buffer, done: HostTransferDone): () => void;
  /**
   * Starts an isochronous URB of `packetLengths` packets over `buffer` (OUT: the bytes; IN: the
   * size to read). Absent where the host side has no isochronous transfers. Returns a cancel.
   */
  submitIso?(endpointAddress: number, buffer: Uint8Array, packetLengths: number[], done: HostIsoDone): () => void;
  close(): void;
  /** A usbfs descriptor holding the claims, on which the machine thread may submit and reap its own URBs (null: none). */
  usbfsNode?(): { fd: number; path: string } | null;
}

const TYPE_CODE = { control: 0, bulk: 2, interrupt: 3 } as const;

/** libusb transfer status → ours (LIBUSB_TRANSFER_*: 1 error, 2 timed out, 3 cancelled, 4 stall, 5 no device, 6 overflow). */
export function statusOfLibusb(code: number): HostTransferStatus {
  switch (code) {
    case 0: return 'ok';
    case 3: return 'cancelled';
    case 4: return 'stall';
    case 5: return 'no-device';
    case 6: return 'babble';
    default: return 'error';
  }
}

/** A usbfs URB status (0 or -errno) → ours. */
export { statusOfUrb };

/**
 * The interface a control request's recipient belongs to (usbfs checks the claim of that one),
 * or -1: device recipients, endpoint 0, vendor requests (usbfs does not check those).
 */
export function controlRecipientInterface(
  setup: Uint8Array,
  interfaces: readonly (readonly { bInterfaceNumber: number; endpoints: readonly { bEndpointAddress: number }[] }[])[],
): number {
  if ((setup[0] & 0x60) === 0x40) return -1;
  const recipient = setup[0] & 0x1f;
  const index = setup[4];
  if (recipient === 1) return index;
  if (recipient !== 2 || (index & 0x7f) === 0) return -1;
  for (const alts of interfaces) {
    for (const alt of alts) if (alt.endpoints.some((e) => e.bEndpointAddress === index)) return alt.bInterfaceNumber;
  }
  return -1;
}

function asError(e: unknown): Error | null {
  return e === undefined || e === null ? null : e instanceof Error ? e : new Error(String(e));
}

// Isochronous endpoints go through a usbfs fd of our own (native/usbdevfs.ts): usbfs claims are
// per fd, so the interfaces with isochronous endpoints in any alt setting are claimed, switched
// (SET_INTERFACE) and released on that fd, the rest through node-usb.
export class NodeUsbHandle implements HostUsbHandle {
  private isoFd: UsbdevfsDevice | null = null;

  private constructor(private readonly device: UsbModule.Device, private readonly info: HostUsbDeviceInfo) {}

  /** Interfaces of the active configuration with an isochronous endpoint in some alt setting. */
  private isoInterfaces(): Set<number> {
    const out = new Set<number>();
    for (const alts of this.device.configDescriptor?.interfaces ?? []) {
      for (const alt of alts) {
        if (alt.endpoints.some((e) => (e.bmAttributes & 3) === 1)) out.add(alt.bInterfaceNumber);
      }
    }
    return out;
  }

  private iso(): UsbdevfsDevice {
    if (this.isoFd === null) this.isoFd = UsbdevfsDevice.open(this.info.busNumber, this.info.deviceAddress);
    return this.isoFd;
  }

  private viaIso(itf: number): boolean {
    return this.isoInterfaces().has(itf);
  }

  /**
   * A control request addressed to an interface (or an endpoint of one) that our usbfs fd
   * claimed: usbfs refuses it on libusb's fd (the claim is per fd), so it goes as a control URB.
   */
  private controlViaIso(setup: Uint8Array): boolean {
    const itf = controlRecipientInterface(setup, this.device.configDescriptor?.interfaces ?? []);
    return itf >= 0 && this.viaIso(itf);
  }

  /**
   * Opens the device; throws an Error whose message is a sentence (the udev rule for a
   * permission problem). Null when node-usb's list does not have it (libusb's list lags the
   * kernel's, or never learns of it without udevd: see usbfs-handle.ts).
   */
  static open(info: HostUsbDeviceInfo): NodeUsbHandle | null {
    // Loaded on first use: libusb starts its event thread only in a process that passes a device through.
    const usb = (require('usb') as { usb: typeof UsbModule }).usb;
    // The IDs too: a list that missed a departure still holds the old device at a reused address.
    const device = usb.getDeviceList().find((d) => d.busNumber === info.busNumber && d.deviceAddress === info.deviceAddress
      && d.deviceDescriptor.idVendor === info.vendorId && d.deviceDescriptor.idProduct === info.productId);
    if (device === undefined) return null;
    try {
      device.open(false);
    } catch (e) {
      throw new Error(openErrorSentence(info, e));
    }
    // No timeout: a transfer waits for the device as long as the guest waits (the guest cancels).
    device.timeout = 0;
    return new NodeUsbHandle(device, info);
  }

  configurationValue(): number {
    return this.device.configDescriptor?.bConfigurationValue ?? 0;
  }

  interfaceNumbers(): number[] {
    const config = this.device.configDescriptor;
    if (config === undefined) return [];
    return [...new Set(config.interfaces.map((alts) => alts[0]?.bInterfaceNumber).filter((n): n is number => n !== undefined))];
  }

  kernelDriverActive(itf: number): boolean {
    return this.device.__isKernelDriverActive(itf);
  }

  detachKernelDriver(itf: number): void {
    this.device.__detachKernelDriver(itf);
  }

  attachKernelDriver(itf: number): void {
    this.device.__attachKernelDriver(itf);
  }

  claimInterface(itf: number): void {
    if (this.viaIso(itf)) this.iso().claimInterface(itf);
    else this.device.__claimInterface(itf);
  }

  releaseInterface(itf: number, done: HostCallback): void {
    if (this.viaIso(itf)) {
      let error: Error | null = null;
      try {
        this.iso().releaseInterface(itf);
      } catch (e) {
        error = e as Error;
      }
      setImmediate(() => done(error));
      return;
    }
    this.device.__releaseInterface(itf, (e) => done(asError(e)));
  }

  setConfiguration(value: number, done: HostCallback): void {
    this.device.__setConfiguration(value, (e) => done(asError(e)));
  }

  setInterface(itf: number, alternate: number, done: HostCallback): void {
    if (this.viaIso(itf)) {
      let error: Error | null = null;
      try {
        this.iso().setInterface(itf, alternate);
      } catch (e) {
        error = e as Error;
      }
      setImmediate(() => done(error));
      return;
    }
    this.device.__setInterface(itf, alternate, (e) => done(asError(e)));
  }

  submitIso(endpointAddress: number, buffer: Uint8Array, packetLengths: number[], done: HostIsoDone): () => void {
    let cancel: () => void;
    try {
      cancel = this.iso().submit({ type: 'iso', endpoint: endpointAddress, data: buffer, packetLengths }, (r) => {
        done(statusOfUrb(r.status), r.packets.map((p) => ({ actual: p.actual, status: statusOfUrb(p.status), errno: -p.status })), r.data);
      });
    } catch (e) {
      const errno = (e as { errno?: number }).errno;
      setImmediate(() => done(errno === 19 ? 'no-device' : errno === 32 ? 'stall' : 'error', [], new Uint8Array(0)));
      return () => undefined;
    }
    return cancel;
  }

  clearHalt(endpointAddress: number, done: HostCallback): void {
    this.device.__clearHalt(endpointAddress, (e) => done(asError(e)));
  }

  reset(done: HostCallback): void {
    this.device.reset((e) => done(asError(e)));
  }

  submit(endpointAddress: number, type: 'control' | 'bulk' | 'interrupt', buffer: Buffer, done: HostTransferDone): () => void {
    if (type === 'control' && buffer.length >= 8 && this.controlViaIso(buffer)) {
      try {
        return this.iso().submit({ type: 'control', endpoint: 0, data: buffer }, (r) => {
          if ((buffer[0] & 0x80) !== 0 && r.actual > 0) buffer.set(r.data.subarray(8, 8 + r.actual), 8);
          done(statusOfUrb(r.status), Math.max(0, r.actual));
        });
      } catch (e) {
        const errno = (e as { errno?: number }).errno;
        setImmediate(() => done(errno === 19 ? 'no-device' : errno === 32 ? 'stall' : 'error', 0));
        return () => undefined;
      }
    }
    let finished = false;
    const usb = (require('usb') as { usb: typeof UsbModule }).usb;
    const transfer = new usb.Transfer(this.device, endpointAddress, TYPE_CODE[type], 0, (error, _buf, actual) => {
      if (finished) return;
      finished = true;
      done(error ? statusOfLibusb(error.errno) : 'ok', actual);
    });
    try {
      transfer.submit(buffer);
    } catch (e) {
      finished = true;
      const errno = (e as { errno?: number }).errno;
      // Submit refused: LIBUSB_ERROR_NO_DEVICE (-4), PIPE (-9, a halted endpoint), else an error.
      setImmediate(() => done(errno === -4 ? 'no-device' : errno === -9 ? 'stall' : 'error', 0));
      return () => undefined;
    }
    return () => {
      if (finished) return;
      try {
        transfer.cancel();
      } catch {
        // Completed meanwhile (LIBUSB_ERROR_NOT_FOUND): its callback comes anyway.
      }
    };
  }

  close(): void {
    try {
      this.isoFd?.close();
    } finally {
      this.isoFd = null;
      this.device.close();
    }
  }
}
