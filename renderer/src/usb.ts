// What the USB panel shows and sends: labels for ports and devices, and the device a user
// asks to plug in. Pure functions; they import types only, so unit tests can load this file
// on its own (test/helpers/renderer-module.ts).
import type { UsbDeviceSpec, UsbPortDeviceInfo, UsbPortInfo, VmSpec } from '../../main/api/contract';

export type UsbKind = UsbPortDeviceInfo['kind'];

/** The kinds the panel offers, in menu order. */
export const USB_KINDS: readonly { kind: UsbKind; label: string }[] = [
  { kind: 'storage', label: 'USB stick (disk image)' },
  { kind: 'keyboard', label: 'Keyboard' },
  { kind: 'tablet', label: 'Tablet (absolute pointer)' },
  { kind: 'serial', label: 'Serial port (CDC-ACM)' },
];

const KIND_NAMES: Record<UsbKind, string> = { storage: 'USB stick', keyboard: 'Keyboard', tablet: 'Tablet', serial: 'USB serial port', host: 'Host device' };

export function usbKindName(kind: UsbKind): string {
  return KIND_NAMES[kind];
}

const SPEEDS: Record<UsbPortDeviceInfo['speed'], string> = {
  low: 'Low speed (1.5 Mbit/s)',
  full: 'Full speed (12 Mbit/s)',
  high: 'High speed (480 Mbit/s)',
  super: 'SuperSpeed (5 Gbit/s)',
};

export function usbSpeedLabel(speed: UsbPortDeviceInfo['speed']): string {
  return SPEEDS[speed];
}

function hex4(n: number): string {
  return n.toString(16).padStart(4, '0');
}

/** 0x1209, 0x0001 → "1209:0001", as lsusb and `porthole usb list` print it. */
export function formatVidPid(vendorId: number, productId: number): string {
  return `${hex4(vendorId)}:${hex4(productId)}`;
}

export function protocolLabel(protocol: UsbPortInfo['protocol']): string {
  return protocol === 'usb3' ? 'USB 3' : 'USB 2';
}

/** Port 1 on a USB 3 root-hub port → "Port 1 (USB 3)". */
export function portLabel(port: Pick<UsbPortInfo, 'port' | 'protocol'>): string {
  return `Port ${port.port} (${protocolLabel(port.protocol)})`;
}

/** Whether the VM gets an xHCI controller when it starts. */
export function hasUsbController(spec: VmSpec): boolean {
  return spec.usb?.controller === 'xhci';
}

/** A device of the VM's config, in a few words: "Keyboard", "USB stick stick.img (read-only)". */
export function configuredDeviceText(device: UsbDeviceSpec): string {
  const where = device.port === undefined ? '' : ` on port ${device.port}`;
  if (device.kind === 'serial') return `${usbKindName(device.kind)} (${device.backend ?? 'pty'})${where}`;
  if (device.kind !== 'storage') return `${usbKindName(device.kind)}${where}`;
  const slash = device.path.lastIndexOf('/');
  return `USB stick ${device.path.slice(slash + 1)}${device.readOnly ? ' (read-only)' : ''}${where}`;
}

/** "1 of 8 ports in use". */
export function portsInUseText(ports: readonly UsbPortInfo[]): string {
  const used = ports.filter((p) => p.device !== null).length;
  return `${used} of ${ports.length} ${ports.length === 1 ? 'port' : 'ports'} in use`;
}

/**
 * The free ports a device of `kind` may take, best first: storage runs at SuperSpeed on a
 * USB 3 port, keyboards and tablets are full-speed devices and belong on USB 2, but any free
 * port takes any device (the controller falls back the same way).
 */
export function freePortsFor(kind: UsbKind, ports: readonly UsbPortInfo[]): UsbPortInfo[] {
  const preferred: UsbPortInfo['protocol'] = kind === 'storage' ? 'usb3' : 'usb2';
  const free = ports.filter((p) => p.device === null);
  return [...free.filter((p) => p.protocol === preferred), ...free.filter((p) => p.protocol !== preferred)];
}

export interface AttachForm {
  kind: UsbKind;
  /** Storage: the image file as typed or chosen. */
  path: string;
  readOnly: boolean;
  /** A port number, or null for the first free port that suits. */
  port: number | null;
  /** Serial: the host end, as a COM port's forward ("pty" when empty or absent). */
  backend?: string;
}

export type AttachRequest = { ok: true; device: UsbDeviceSpec } | { ok: false; problem: string };

/** The device to send for what the form holds, or why it cannot be sent yet. */
export function attachRequest(form: AttachForm): AttachRequest {
  const port = form.port === null ? {} : { port: form.port };
  if (form.kind === 'serial') {
    const backend = (form.backend ?? '').trim() || 'pty';
    if (backend === 'ui') return { ok: false, problem: 'The app\'s console is for COM ports: connect the USB serial port to a pty, a socket or a file.' };
    return { ok: true, device: { kind: 'serial', backend, ...port } };
  }
  if (form.kind === 'host') return { ok: false, problem: 'Host devices are attached from the host device list.' };
  if (form.kind !== 'storage') return { ok: true, device: { kind: form.kind, ...port } };
  const path = form.path.trim();
  if (path === '') return { ok: false, problem: 'Choose a disk image for the USB stick.' };
  if (!path.startsWith('/')) return { ok: false, problem: 'The disk image must be an absolute path (starting with /).' };
  return { ok: true, device: { kind: 'storage', path, readOnly: form.readOnly, ...port } };
}
