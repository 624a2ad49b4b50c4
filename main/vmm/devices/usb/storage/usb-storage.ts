// A USB stick: mass storage class, SCSI transparent command set, Bulk-Only Transport
// (interface 08/06/50) with one bulk IN and one bulk OUT endpoint, over a BlockBackend.
// Runs on the machine thread; the backend's completions may arrive at any later time.
import type { UsbSetup, UsbSpeed, UsbTransfer } from '../usb-device';
import {
  Recipient,
  RequestKind,
  UsbDeviceBase,
  requestIsIn,
  requestKind,
  requestRecipient,
  type UsbControlResult,
  type UsbDataResult,
} from '../usb-device-base';
import type { UsbDeviceSpec } from '../descriptors';
import type { BlockBackend } from './block-backend';
import { openBlockImage, type ImageFormat } from '../../block/open-image';
import { BulkOnlyTransport } from './bot';
import { ScsiDisk } from './scsi';

/** Class requests of the Bulk-Only Transport (spec 3.1, 3.2). */
export const MassStorageRequest = {
  reset: 0xff,
  getMaxLun: 0xfe,
} as const;

const INTERFACE = 0;
export const BULK_IN = 0x81;
export const BULK_OUT = 0x02;

/** The pid.codes test VID:PID until Porthole has IDs of its own; matches no quirk in guest drivers. */
export const DEFAULT_VENDOR_ID = 0x1209;
export const DEFAULT_PRODUCT_ID = 0x0001;

export interface UsbStorageOptions {
  /** 'high' (512-byte bulk packets, the default), 'super' (1024 bytes, burst 15) or 'full' (64). */
  speed?: Extract<UsbSpeed, 'full' | 'high' | 'super'>;
  /** For logs and the UI; default "usb-storage". */
  name?: string;
  /** The USB and SCSI serial number: at least 12 characters of 0-9A-F (BOT spec 4.1.1). */
  serial?: string;
  vendorId?: number;
  productId?: number;
  /** INQUIRY product and the USB product string. */
  product?: string;
}

/** A 12-digit serial made from a text (the image path): stable for one image, different between images. */
export function serialFrom(text: string): string {
  let a = 0x811c9dc5;
  let b = 0x01000193;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193) >>> 0;
    b = Math.imul(b ^ c, 0x5bd1e995) >>> 0;
  }
  return (a.toString(16).padStart(8, '0') + b.toString(16).padStart(8, '0')).slice(0, 12).toUpperCase();
}

function storageSpec(options: UsbStorageOptions, serial: string, speed: UsbSpeed): UsbDeviceSpec {
  const packet = speed === 'super' ? 1024 : speed === 'high' ? 512 : 64;
  const burst = speed === 'super' ? 15 : undefined;
  return {
    class: 0, subclass: 0, protocol: 0,
    vendorId: options.vendorId ?? DEFAULT_VENDOR_ID,
    productId: options.productId ?? DEFAULT_PRODUCT_ID,
    deviceVersion: 0x0100,
    manufacturer: 'Porthole',
    product: options.product ?? 'USB Disk',
    serial,
    configurations: [{
      value: 1, maxPowerMa: speed === 'super' ? 144 : 100,
      interfaces: [{
        number: INTERFACE, class: 0x08, subclass: 0x06, protocol: 0x50, name: 'Mass Storage',
        endpoints: [
          { number: BULK_IN & 0x0f, in: true, kind: 'bulk', maxPacketSize: packet, interval: 0, maxBurst: burst },
          { number: BULK_OUT, in: false, kind: 'bulk', maxPacketSize: packet, interval: 0, maxBurst: burst },
        ],
      }],
    }],
  };
}

export class UsbStorage extends UsbDeviceBase {
  readonly disk: ScsiDisk;
  private readonly transport: BulkOnlyTransport;

  constructor(readonly backend: BlockBackend, options: UsbStorageOptions = {}) {
    const speed = options.speed ?? 'high';
    const serial = (options.serial ?? '000000000001').toUpperCase();
    super({ name: options.name ?? 'usb-storage', speed, spec: storageSpec(options, serial, speed) });
    this.disk = new ScsiDisk(backend, { serial, product: options.product });
    this.disk.onIoError = (text) => this.log(text);
    this.transport = new BulkOnlyTransport(this.disk, {
      complete: (transfer, result) => this.completeTransfer(transfer, result),
      halt: (inEndpoint) => this.haltEndpoint(inEndpoint ? BULK_IN : BULK_OUT),
    });
  }

  get readOnly(): boolean {
    return this.backend.readOnly;
  }

  /** An image read and written inline moves bulk data straight to and from guest memory. */
  get movesGuestMemory(): boolean {
    return this.backend.readvNow !== undefined && this.backend.writevNow !== undefined;
  }

  /** The guest asked that the medium not be removed (PREVENT ALLOW MEDIUM REMOVAL). */
  get removalPrevented(): boolean {
    return this.disk.removalPrevented;
  }

  /** Releases the image once the operations in flight have completed; the device is unusable after. */
  close(): void {
    this.backend.close();
  }

  protected override handleControl(setup: UsbSetup, _outData: Uint8Array | null): UsbControlResult {
    if (requestKind(setup) !== RequestKind.class || requestRecipient(setup) !== Recipient.interface) return 'stall';
    if (this.configurationValue === 0 || setup.index !== INTERFACE || setup.value !== 0) return 'stall';
    if (setup.request === MassStorageRequest.reset && !requestIsIn(setup) && setup.length === 0) {
      this.transport.massStorageReset();
      return 'ok';
    }
    if (setup.request === MassStorageRequest.getMaxLun && requestIsIn(setup) && setup.length === 1) {
      return Uint8Array.of(0);
    }
    return 'stall';
  }

  protected override handleData(transfer: UsbTransfer, _address: number): UsbDataResult {
    // The transport completes it (through completeTransfer) now or when the data is there.
    this.transport.offer(transfer);
    return 'pending';
  }

  protected override onTransferCancelled(transfer: UsbTransfer): void {
    this.transport.forget(transfer);
  }

  protected override onEndpointHaltCleared(address: number): void {
    if (address === BULK_IN || address === BULK_OUT) this.transport.haltCleared(address === BULK_IN);
  }

  protected override onConfigurationChanged(): void {
    this.transport.busReset();
  }

  protected override onInterfaceChanged(): void {
    this.transport.busReset();
  }

  protected override onReset(): void {
    this.transport.busReset();
  }

  protected override onDetach(): void {
    this.transport.busReset();
  }
}

/**
 * Opens a raw image and makes a stick of it. Throws an ImageError naming the path and the
 * problem (missing, locked, unreadable, empty, not a whole number of blocks) before any
 * device exists.
 */
export function openUsbStorage(path: string, options: UsbStorageOptions & { readOnly?: boolean; synchronous?: boolean; format?: ImageFormat } = {}): UsbStorage {
  const backend = openBlockImage(path, { readOnly: options.readOnly, synchronous: options.synchronous, format: options.format });
  try {
    return new UsbStorage(backend, {
      serial: serialFrom(backend.path),
      name: `usb-storage ${backend.path.split('/').pop()}`,
      ...options,
    });
  } catch (error) {
    backend.close();
    throw error;
  }
}
