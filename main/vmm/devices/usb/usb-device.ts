// The USB device layer's contract: what a host controller port (the xHCI) sees of a device.
// Emulated devices (HID, mass storage, CDC-ACM) implement UsbDevice; host devices
// (passthrough, on the VM host thread) will be adapted to it over the host channel.
// Runs on the machine thread. Transfers are asynchronous: a device may complete one at once
// (inside submit) or later (a key press, a file read finishing on the VM host).

export type UsbSpeed = 'low' | 'full' | 'high' | 'super';

export type UsbTransferType = 'control' | 'isochronous' | 'bulk' | 'interrupt';

/** How a transfer ended; the controller maps it to its completion codes. */
export type UsbStatus =
  | 'pending'
  /** Completed; `actualLength` bytes moved. A short IN packet is 'ok' with actualLength < data.length. */
  | 'ok'
  /** The endpoint halted (protocol stall on EP0, or halt on another endpoint). */
  | 'stall'
  /** The device sent more than the buffer holds. */
  | 'babble'
  /** The device is gone (unplugged, or its host side failed). */
  | 'no-device'
  /** Cancelled by the controller (Stop Endpoint, reset, unplug) before it completed. */
  | 'cancelled'
  /** Any other transaction error. */
  | 'error';

/** An 8-byte control SETUP packet, decoded. */
export interface UsbSetup {
  requestType: number;
  request: number;
  value: number;
  index: number;
  length: number;
}

/** One transfer on one endpoint. The controller owns `data`; the device fills or reads it. */
export interface UsbTransfer {
  /** Endpoint number 0..15. */
  readonly endpoint: number;
  /** true: device to host. For control transfers, the data stage's direction. */
  readonly in: boolean;
  readonly type: UsbTransferType;
  /** The SETUP packet (control transfers only). */
  readonly setup: UsbSetup | null;
  /** OUT: the bytes to send. IN: the buffer to fill; its length is what the host asked for. */
  readonly data: Uint8Array;
  /** Isochronous: the packet lengths inside `data`, in order (their sum is data.length). */
  readonly isoPackets?: number[];
  /**
   * Guest memory the bytes move to (IN) or from (OUT), in order, when the controller lets the
   * device move them itself (UsbDevice.movesGuestMemory): `data` is then empty, and the
   * transfer's length is the segments' total (transferLength). Saves the copies through `data`.
   */
  readonly guest?: readonly Uint8Array[];
  /** The guest segments' total, when the controller knows it (saves a walk over them). */
  readonly guestLength?: number;
  status: UsbStatus;
  actualLength: number;
}

/** Bytes the host asked for (IN) or sends (OUT): data.length, or the guest segments' total. */
export function transferLength(t: UsbTransfer): number {
  if (t.guest === undefined) return t.data.length;
  if (t.guestLength !== undefined) return t.guestLength;
  let n = 0;
  for (const s of t.guest) n += s.length;
  return n;
}

/** What a device may ask of the port it sits on. */
export interface UsbPortHost {
  /** Remote wake-up from suspend (a HID key press), if the guest enabled it. */
  wakeup(): void;
  /** A log line for the VM's log. */
  log(text: string): void;
}

export interface UsbDevice {
  /** Shown in logs, stats and the UI ("usb-kbd", "usb-storage stick.img"). */
  readonly name: string;
  readonly speed: UsbSpeed;
  /** From the device descriptor, for the UI and the port's speed check. */
  readonly vendorId: number;
  readonly productId: number;
  /**
   * True: the device takes bulk transfers that carry `guest` segments instead of `data`, and
   * moves their bytes itself (a disk reading straight into guest memory).
   */
  readonly movesGuestMemory?: boolean;
  /** Called when the device is plugged into a port, before any transfer. */
  attach(port: UsbPortHost): void;
  /** Called when the device leaves its port: every pending transfer completes as 'no-device' or 'cancelled' first. */
  detach(): void;
  /** A bus reset (port reset): address 0, unconfigured, pending transfers cancelled. */
  reset(): void;
  /**
   * Starts a transfer. The device calls `done(transfer)` exactly once, with `status` and
   * `actualLength` set: maybe before submit returns, maybe later. Transfers on one endpoint
   * complete in submission order.
   */
  submit(transfer: UsbTransfer, done: (transfer: UsbTransfer) => void): void;
  /** Cancels a pending transfer: `done` is called with 'cancelled' (at once) unless it already completed. */
  cancel(transfer: UsbTransfer): void;
}
