// USB descriptors (USB 2.0 ch. 9.6, USB 3.2 ch. 9.6): plain specs in, descriptor bytes out.
// A device describes itself once as a UsbDeviceSpec; buildDescriptors() lays out the device,
// configuration (with interfaces, class-specific descriptors and endpoints), string, BOS and
// device-qualifier descriptors for the speed the device runs at. Runs on the machine thread.

import type { UsbSpeed } from './usb-device';

export const DescriptorType = {
  device: 0x01,
  configuration: 0x02,
  string: 0x03,
  interface: 0x04,
  endpoint: 0x05,
  deviceQualifier: 0x06,
  otherSpeedConfiguration: 0x07,
  interfacePower: 0x08,
  bos: 0x0f,
  deviceCapability: 0x10,
  superSpeedEndpointCompanion: 0x30,
} as const;

/** US English, the one language our string descriptors are in. */
export const LANGUAGE_EN_US = 0x0409;

export type UsbEndpointKind = 'isochronous' | 'bulk' | 'interrupt';

const ENDPOINT_KIND_BITS: Record<UsbEndpointKind, number> = { isochronous: 1, bulk: 2, interrupt: 3 };

export interface UsbEndpointSpec {
  /** Endpoint number 1..15. */
  number: number;
  /** true: IN (device to host). */
  in: boolean;
  kind: UsbEndpointKind;
  /** wMaxPacketSize (the packet size; for high-speed periodic endpoints, add `extraTransactions`). */
  maxPacketSize: number;
  /** bInterval as the descriptor carries it (frames at full/low speed, 2^(n-1) (micro)frames above). */
  interval: number;
  /** High-speed periodic endpoints: additional transactions per microframe (0..2). */
  extraTransactions?: number;
  /** Isochronous bmAttributes bits 2..5 (synchronisation and usage types). */
  isoAttributes?: number;
  /** SuperSpeed companion: bMaxBurst (0..15). */
  maxBurst?: number;
  /** SuperSpeed companion: bmAttributes (bulk: MaxStreams; isochronous: Mult). */
  companionAttributes?: number;
}

export interface UsbInterfaceSpec {
  number: number;
  /** bAlternateSetting; several specs with one number are the alternate settings of one interface. */
  alternate?: number;
  class: number;
  subclass: number;
  protocol: number;
  /** iInterface's text. */
  name?: string;
  /** Class-specific descriptors (HID, CDC functional), placed after the interface descriptor. */
  classDescriptors?: Uint8Array[];
  endpoints: UsbEndpointSpec[];
}

export interface UsbConfigurationSpec {
  /** bConfigurationValue, 1..255. */
  value: number;
  name?: string;
  selfPowered?: boolean;
  remoteWakeup?: boolean;
  /** Bus power drawn, in mA. */
  maxPowerMa: number;
  interfaces: UsbInterfaceSpec[];
  /** Descriptors placed right after the configuration descriptor (an Interface Association). */
  leadingDescriptors?: Uint8Array[];
}

export interface UsbDeviceSpec {
  /** bcdUSB; default 0x0200, or 0x0320 for a SuperSpeed device. */
  usbVersion?: number;
  class: number;
  subclass: number;
  protocol: number;
  /** EP0's packet size in bytes; default 8 (low), 64 (full, high) or 512 (super). */
  maxPacketSize0?: number;
  vendorId: number;
  productId: number;
  /** bcdDevice. */
  deviceVersion: number;
  manufacturer?: string;
  product?: string;
  serial?: string;
  configurations: UsbConfigurationSpec[];
}

/** Every descriptor of one device at one speed, as bytes a GET_DESCRIPTOR returns. */
export interface UsbDescriptorSet {
  device: Uint8Array;
  /** Full configuration descriptors (with everything under them), by index. */
  configurations: Uint8Array[];
  /** String descriptors by index; index 0 is the language list. */
  strings: Map<number, Uint8Array>;
  /** The BOS descriptor (SuperSpeed devices), or null. */
  bos: Uint8Array | null;
  /** The device qualifier (high-speed devices: how they would look at full speed), or null. */
  deviceQualifier: Uint8Array | null;
}

function le16(out: number[], v: number): void {
  out.push(v & 0xff, (v >>> 8) & 0xff);
}

/** A string descriptor: UTF-16LE, at most 126 code units so bLength fits a byte. */
export function stringDescriptor(text: string): Uint8Array {
  const units = Math.min(text.length, 126);
  const out = new Uint8Array(2 + units * 2);
  out[0] = out.length;
  out[1] = DescriptorType.string;
  for (let i = 0; i < units; i++) {
    const c = text.charCodeAt(i);
    out[2 + i * 2] = c & 0xff;
    out[3 + i * 2] = c >>> 8;
  }
  return out;
}

/** String descriptor 0: the supported language ids. */
export function languageDescriptor(languages: number[] = [LANGUAGE_EN_US]): Uint8Array {
  const out: number[] = [2 + languages.length * 2, DescriptorType.string];
  for (const l of languages) le16(out, l);
  return Uint8Array.from(out);
}

export function endpointAddress(ep: Pick<UsbEndpointSpec, 'number' | 'in'>): number {
  return (ep.number & 0x0f) | (ep.in ? 0x80 : 0);
}

export function endpointDescriptor(ep: UsbEndpointSpec): Uint8Array {
  const attributes = ENDPOINT_KIND_BITS[ep.kind] | (ep.kind === 'isochronous' ? (ep.isoAttributes ?? 0) & 0x3c : 0);
  const out: number[] = [7, DescriptorType.endpoint, endpointAddress(ep), attributes];
  le16(out, (ep.maxPacketSize & 0x7ff) | (((ep.extraTransactions ?? 0) & 3) << 11));
  out.push(ep.interval & 0xff);
  return Uint8Array.from(out);
}

/** SuperSpeed Endpoint Companion (USB 3.2 9.6.7); wBytesPerInterval only for periodic endpoints. */
export function superSpeedCompanionDescriptor(ep: UsbEndpointSpec): Uint8Array {
  const burst = (ep.maxBurst ?? 0) & 0x0f;
  const attributes = (ep.companionAttributes ?? 0) & 0xff;
  const mult = ep.kind === 'isochronous' ? (attributes & 3) + 1 : 1;
  const bytesPerInterval = ep.kind === 'bulk' ? 0 : Math.min(0xffff, ep.maxPacketSize * (burst + 1) * mult);
  const out: number[] = [6, DescriptorType.superSpeedEndpointCompanion, burst, attributes];
  le16(out, bytesPerInterval);
  return Uint8Array.from(out);
}

function concat(parts: Uint8Array[]): Uint8Array {
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Assigns string indices in first-use order (1, 2, ...); the same text shares one index. */
class StringTable {
  readonly texts: string[] = [];
  index(text: string | undefined): number {
    if (text === undefined || text === '') return 0;
    const known = this.texts.indexOf(text);
    if (known >= 0) return known + 1;
    if (this.texts.length >= 255) return 0;
    this.texts.push(text);
    return this.texts.length;
  }
}

export function defaultMaxPacketSize0(speed: UsbSpeed): number {
  return speed === 'low' ? 8 : speed === 'super' ? 512 : 64;
}

function configurationDescriptor(
  config: UsbConfigurationSpec,
  speed: UsbSpeed,
  strings: StringTable,
  type: number = DescriptorType.configuration,
): Uint8Array {
  const body: Uint8Array[] = [...(config.leadingDescriptors ?? [])];
  for (const itf of config.interfaces) {
    body.push(
      Uint8Array.from([
        9, DescriptorType.interface, itf.number, itf.alternate ?? 0, itf.endpoints.length,
        itf.class, itf.subclass, itf.protocol, strings.index(itf.name),
      ]),
    );
    body.push(...(itf.classDescriptors ?? []));
    for (const ep of itf.endpoints) {
      body.push(endpointDescriptor(ep));
      if (speed === 'super') body.push(superSpeedCompanionDescriptor(ep));
    }
  }
  const interfaceCount = new Set(config.interfaces.map((i) => i.number)).size;
  const totalLength = 9 + body.reduce((n, p) => n + p.length, 0);
  const attributes = 0x80 | (config.selfPowered ? 0x40 : 0) | (config.remoteWakeup ? 0x20 : 0);
  // bMaxPower is in 2 mA units, or 8 mA units at SuperSpeed.
  const powerUnits = Math.min(255, Math.ceil(config.maxPowerMa / (speed === 'super' ? 8 : 2)));
  const head: number[] = [9, type];
  le16(head, totalLength);
  head.push(interfaceCount, config.value, strings.index(config.name), attributes, powerUnits);
  return concat([Uint8Array.from(head), ...body]);
}

/** BOS with a USB 2.0 Extension and a SuperSpeed USB device capability (USB 3.2 9.6.2). */
function superSpeedBos(): Uint8Array {
  const usb2Extension = [7, DescriptorType.deviceCapability, 0x02, 0x02, 0, 0, 0]; // LPM supported
  const superSpeed: number[] = [10, DescriptorType.deviceCapability, 0x03, 0x00];
  le16(superSpeed, 0x000e); // wSpeedsSupported: full, high, super
  superSpeed.push(0x01); // bFunctionalitySupport: full speed is the lowest that works
  superSpeed.push(0x0a); // bU1DevExitLat, µs
  le16(superSpeed, 0x07ff); // wU2DevExitLat, µs
  const caps = [...usb2Extension, ...superSpeed];
  const head: number[] = [5, DescriptorType.bos];
  le16(head, 5 + caps.length);
  head.push(2);
  return Uint8Array.from([...head, ...caps]);
}

export function buildDescriptors(spec: UsbDeviceSpec, speed: UsbSpeed): UsbDescriptorSet {
  const strings = new StringTable();
  const usbVersion = spec.usbVersion ?? (speed === 'super' ? 0x0320 : 0x0200);
  const maxPacketSize0 = spec.maxPacketSize0 ?? defaultMaxPacketSize0(speed);
  // At SuperSpeed bMaxPacketSize0 is an exponent (9: 512 bytes).
  const packetField = speed === 'super' ? Math.round(Math.log2(maxPacketSize0)) : maxPacketSize0;
  const device: number[] = [18, DescriptorType.device];
  le16(device, usbVersion);
  device.push(spec.class, spec.subclass, spec.protocol, packetField & 0xff);
  le16(device, spec.vendorId);
  le16(device, spec.productId);
  le16(device, spec.deviceVersion);
  device.push(strings.index(spec.manufacturer), strings.index(spec.product), strings.index(spec.serial));
  device.push(spec.configurations.length);

  const configurations = spec.configurations.map((c) => configurationDescriptor(c, speed, strings));

  let deviceQualifier: Uint8Array | null = null;
  if (speed === 'high') {
    const q: number[] = [10, DescriptorType.deviceQualifier];
    le16(q, usbVersion);
    q.push(spec.class, spec.subclass, spec.protocol, 64, spec.configurations.length, 0);
    deviceQualifier = Uint8Array.from(q);
  }

  const stringMap = new Map<number, Uint8Array>();
  stringMap.set(0, languageDescriptor());
  strings.texts.forEach((t, i) => stringMap.set(i + 1, stringDescriptor(t)));

  return {
    device: Uint8Array.from(device),
    configurations,
    strings: stringMap,
    bos: speed === 'super' ? superSpeedBos() : null,
    deviceQualifier,
  };
}
