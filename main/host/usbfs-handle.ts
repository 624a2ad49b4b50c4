// A host USB device opened through usbfs alone (native/usbdevfs.ts), for when node-usb cannot
// see it. node-usb's libusb keeps its own device list, filled at start and then only from
// hotplug events; built with libudev (as node-usb's Linux binaries are) those events come from
// udevd's netlink group, so on a host without udevd (a minimal system, the rig's L1) a device
// that appears later never enters libusb's list. The kernel's /dev/bus/usb/BBB/DDD is there
// regardless, and usbfs has everything passthrough needs: claims, driver detach/attach,
// SET_CONFIGURATION/SET_INTERFACE, CLEAR_HALT, reset and URBs of every type.
// Completions arrive on the thread that opened it (native/usbfs-poller.ts waits for them with
// poll(2) on a worker; usbdevfs reaps them with REAPURBNDELAY here).
import { type HostCallback, type HostIsoDone, type HostTransferDone, type HostUsbHandle, NodeUsbHandle, statusOfUrb } from './host-usb-handle';
import type { HostUsbDeviceInfo } from './usb-inventory';
import { openErrorSentence } from './usb-inventory';
import { UsbdevfsDevice } from '../../native/usbdevfs';

export interface ParsedConfiguration {
  value: number;
  /** bInterfaceNumber of each interface (alt settings folded). */
  interfaces: number[];
}

export interface ParsedDescriptors {
  vendorId: number;
  productId: number;
  configurations: ParsedConfiguration[];
  /** Some configuration has an isochronous endpoint (in any alt setting). */
  isochronous: boolean;
}

/**
 * Reads what usbfs serves on read(): an 18-byte device descriptor, then each configuration's
 * descriptors (wTotalLength bytes each). Null when it is not that shape.
 */
export function parseUsbfsDescriptors(bytes: Uint8Array): ParsedDescriptors | null {
  if (bytes.length < 18 || bytes[0] !== 18 || bytes[1] !== 1) return null;
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const configurations: ParsedConfiguration[] = [];
  let isochronous = false;
  let at = 18;
  for (let i = 0; i < bytes[17] && at + 9 <= bytes.length; i++) {
    if (bytes[at + 1] !== 2 || bytes[at] < 9) return null;
    const total = v.getUint16(at + 2, true);
    const end = Math.min(bytes.length, at + Math.max(total, 9));
    const interfaces: number[] = [];
    for (let d = at + bytes[at]; d + 2 <= end; d += bytes[d]) {
      if (bytes[d] < 2) break;
      if (bytes[d + 1] === 4 && bytes[d] >= 9 && d + 9 <= end && !interfaces.includes(bytes[d + 2])) interfaces.push(bytes[d + 2]);
      if (bytes[d + 1] === 5 && bytes[d] >= 7 && d + 7 <= end && (bytes[d + 3] & 3) === 1) isochronous = true;
    }
    configurations.push({ value: bytes[at + 5], interfaces });
    at = end;
  }
  return { vendorId: v.getUint16(8, true), productId: v.getUint16(10, true), configurations, isochronous };
}

function errnoStatus(e: unknown): 'no-device' | 'stall' | 'error' {
  const errno = (e as { errno?: number }).errno;
  return errno === 19 ? 'no-device' : errno === 32 ? 'stall' : 'error';
}

function callback(fn: () => void, done: HostCallback): void {
  let error: Error | null = null;
  try {
    fn();
  } catch (e) {
    error = e instanceof Error ? e : new Error(String(e));
  }
  setImmediate(() => done(error));
}

export class UsbfsHandle implements HostUsbHandle {
  private configuration: number;

  private constructor(private readonly dev: UsbdevfsDevice, private readonly descriptors: ParsedDescriptors, configuration: number) {
    this.configuration = configuration;
  }

  /**
   * Opens /dev/bus/usb/BBB/DDD of `info`; throws a sentence: the udev rule for a permission
   * problem, "is gone" when the node is missing or now holds another device (its address reused).
   */
  static open(info: HostUsbDeviceInfo, root?: string): UsbfsHandle {
    let dev: UsbdevfsDevice;
    try {
      dev = UsbdevfsDevice.open(info.busNumber, info.deviceAddress, root);
    } catch (e) {
      throw new Error(openErrorSentence(info, e));
    }
    let parsed: ParsedDescriptors | null = null;
    try {
      parsed = parseUsbfsDescriptors(dev.readDescriptors());
    } catch {
      parsed = null;
    }
    if (parsed === null || parsed.vendorId !== info.vendorId || parsed.productId !== info.productId) {
      dev.close();
      throw new Error(`Host USB device ${info.sysfsName} is gone (unplugged?).`);
    }
    return new UsbfsHandle(dev, parsed, info.configuration);
  }

  configurationValue(): number {
    return this.configuration;
  }

  /**
   * The descriptor the machine thread may submit its own URBs on (a dup of it), for a device
   * without isochronous endpoints: no URB of this handle's is then in flight on it, so the
   * machine thread is the file's only reaper (isochronous URBs stay on this thread's poller).
   */
  usbfsNode(): { fd: number; path: string } | null {
    return this.descriptors.isochronous || this.dev.fd < 0 ? null : { fd: this.dev.fd, path: this.dev.path };
  }

  interfaceNumbers(): number[] {
    return this.descriptors.configurations.find((c) => c.value === this.configuration)?.interfaces.slice() ?? [];
  }

  kernelDriverActive(itf: number): boolean {
    const driver = this.dev.driverOf(itf);
    // "usbfs": a usbfs claim (ours or another program's), not a kernel driver to detach.
    return driver !== null && driver !== 'usbfs';
  }

  detachKernelDriver(itf: number): void {
    this.dev.disconnectDriver(itf);
  }

  attachKernelDriver(itf: number): void {
    this.dev.connectDriver(itf);
  }

  claimInterface(itf: number): void {
    this.dev.claimInterface(itf);
  }

  releaseInterface(itf: number, done: HostCallback): void {
    callback(() => this.dev.releaseInterface(itf), done);
  }

  setConfiguration(value: number, done: HostCallback): void {
    callback(() => {
      this.dev.setConfiguration(value);
      this.configuration = value;
    }, done);
  }

  setInterface(itf: number, alternate: number, done: HostCallback): void {
    callback(() => this.dev.setInterface(itf, alternate), done);
  }

  clearHalt(endpointAddress: number, done: HostCallback): void {
    callback(() => this.dev.clearHalt(endpointAddress), done);
  }

  reset(done: HostCallback): void {
    callback(() => this.dev.reset(), done);
  }

  submit(endpointAddress: number, type: 'control' | 'bulk' | 'interrupt', buffer: Buffer, done: HostTransferDone): () => void {
    const control = type === 'control';
    const dirIn = control ? (buffer[0] & 0x80) !== 0 : (endpointAddress & 0x80) !== 0;
    try {
      return this.dev.submit({ type, endpoint: control ? 0 : endpointAddress, data: buffer }, (r) => {
        // A control URB's actual length counts the data stage only; its buffer starts with SETUP.
        const base = control ? 8 : 0;
        const actual = Math.max(0, Math.min(r.actual, buffer.length - base));
        if (dirIn && actual > 0) buffer.set(r.data.subarray(base, base + actual), base);
        done(statusOfUrb(r.status), actual);
      });
    } catch (e) {
      setImmediate(() => done(errnoStatus(e), 0));
      return () => undefined;
    }
  }

  submitIso(endpointAddress: number, buffer: Uint8Array, packetLengths: number[], done: HostIsoDone): () => void {
    try {
      return this.dev.submit({ type: 'iso', endpoint: endpointAddress, data: buffer, packetLengths }, (r) => {
        done(statusOfUrb(r.status), r.packets.map((p) => ({ actual: p.actual, status: statusOfUrb(p.status), errno: -p.status })), r.data);
      });
    } catch (e) {
      setImmediate(() => done(errnoStatus(e), [], new Uint8Array(0)));
      return () => undefined;
    }
  }

  close(): void {
    this.dev.close();
  }
}

/**
 * Opens a host device for passthrough. A device without isochronous endpoints goes through
 * usbfs alone, so the machine thread can submit its URBs on the same file (direct URBs, no
 * channel hop); else through node-usb when its list has the device, else usbfs alone.
 * PORTHOLE_USB_DIRECT=0 keeps node-usb first for every device. Throws a sentence.
 */
export function openHostUsbHandle(info: HostUsbDeviceInfo, usbfsRoot?: string): HostUsbHandle {
  if (process.env.PORTHOLE_USB_DIRECT !== '0') {
    const handle = UsbfsHandle.open(info, usbfsRoot);
    if (handle.usbfsNode() !== null) return handle;
    handle.close();
  }
  return NodeUsbHandle.open(info) ?? UsbfsHandle.open(info, usbfsRoot);
}
