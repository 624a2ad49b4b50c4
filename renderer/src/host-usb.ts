// The USB panel's host device list: each host device's state as seen from one VM, the
// action it offers, and the attach request. Pure functions; types-only imports, so unit
// tests load this file on its own (test/helpers/renderer-module.ts).
import type { HostUsbAttachSpec, HostUsbDeviceSummary, UsbPortInfo, UsbRuleSpec } from '../../main/api/contract';

export type HostDeviceState =
  /** Passed through to this VM, on `port`. */
  | { kind: 'here'; port: number }
  /** In another VM ("name (process PID)"). */
  | { kind: 'other'; vm: string }
  | { kind: 'hub' }
  /** This user may not open it: `rule` is the udev rule that fixes it. */
  | { kind: 'no-permission'; rule: string }
  /** The host depends on it (a sentence); attaching needs force. */
  | { kind: 'host-needs'; reason: string }
  | { kind: 'free' };

function hex4(n: number): string {
  return n.toString(16).padStart(4, '0');
}

/** The rule main's inventory names (main/host/usb-inventory.ts udevRule). */
export function udevRuleFor(vendorId: number, productId: number): string {
  return `SUBSYSTEM=="usb", ATTR{idVendor}=="${hex4(vendorId)}", ATTR{idProduct}=="${hex4(productId)}", TAG+="uaccess"`;
}

/** Where the rule goes and what to run after, for the panel's hint. */
export const UDEV_RULE_FILE = '/etc/udev/rules.d/70-porthole.rules';
export const UDEV_RELOAD = 'sudo udevadm control --reload && sudo udevadm trigger';

/** What a host device is to the VM whose ports are `ports` (null: not read yet). */
export function hostDeviceState(device: HostUsbDeviceSummary, ports: readonly UsbPortInfo[] | null): HostDeviceState {
  const here = ports?.find((p) => p.device?.kind === 'host' && p.device.hostDevice === device.name);
  if (here !== undefined) return { kind: 'here', port: here.port };
  if (device.heldBy !== null) return { kind: 'other', vm: device.heldBy };
  if (device.isHub) return { kind: 'hub' };
  if (!device.accessible) return { kind: 'no-permission', rule: udevRuleFor(device.vendorId, device.productId) };
  if (device.hostNeeds !== null) return { kind: 'host-needs', reason: device.hostNeeds };
  return { kind: 'free' };
}

export function hostStateText(state: HostDeviceState): string {
  switch (state.kind) {
    case 'here': return `In this VM (port ${state.port})`;
    case 'other': return `In VM ${state.vm}`;
    case 'hub': return 'A hub (not passed through)';
    case 'no-permission': return 'No permission';
    case 'host-needs': return `The host needs it: ${state.reason}`;
    case 'free': return 'Free';
  }
}

/** The button a device's row offers: attach, attach with force (after a confirm), give back, or none. */
export function hostDeviceAction(state: HostDeviceState, vmRunning: boolean): 'attach' | 'force' | 'detach' | null {
  if (state.kind === 'here') return 'detach';
  if (!vmRunning) return null;
  if (state.kind === 'free') return 'attach';
  if (state.kind === 'host-needs') return 'force';
  return null;
}

/** "QEMU QEMU USB Keyboard", or "USB device 1-2" for a device without strings. */
export function hostDeviceName(device: Pick<HostUsbDeviceSummary, 'manufacturer' | 'product' | 'name'>): string {
  return [device.manufacturer, device.product].filter((x) => x !== null && x.trim() !== '').join(' ') || `USB device ${device.name}`;
}

const SPEEDS: Record<NonNullable<HostUsbDeviceSummary['speed']>, string> = {
  'low': 'Low (1.5 Mbit/s)',
  'full': 'Full (12 Mbit/s)',
  'high': 'High (480 Mbit/s)',
  'super': 'Super (5 Gbit/s)',
  'super-plus': 'Super+ (10 Gbit/s)',
};

export function hostSpeedLabel(speed: HostUsbDeviceSummary['speed']): string {
  return speed === null ? 'Unknown' : SPEEDS[speed];
}

/** The host port path as lsusb -t reads it: "bus 1, port 3.2". */
export function hostPortText(device: Pick<HostUsbDeviceSummary, 'name' | 'busNumber'>): string {
  const dash = device.name.indexOf('-');
  return `bus ${device.busNumber}, port ${dash < 0 ? device.name : device.name.slice(dash + 1)}`;
}

/** What attachHostUsbDevice gets for a row: its port path, the chosen VM port (null: first free), force. */
export function hostAttachSpec(device: Pick<HostUsbDeviceSummary, 'name'>, port: number | null, force: boolean): HostUsbAttachSpec {
  return { device: device.name, ...(port === null ? {} : { port }), ...(force ? { force: true } : {}) };
}

/** The confirm dialog's sentence before forcing a device the host needs away from it. */
export function forceWarning(device: HostUsbDeviceSummary, reason: string): string {
  return `${hostDeviceName(device)} (${device.name}) is needed by the host: ${reason}. ` +
    'Passing it through takes it away from the host until the VM gives it back; unsaved data on a mounted disk may be lost. Pass it through anyway?';
}

/** The rule "Always attach to this VM" adds: the device's VID:PID, and its serial when it has one (that unit, on any port). */
export function alwaysAttachRule(device: Pick<HostUsbDeviceSummary, 'vendorId' | 'productId' | 'serial'>): UsbRuleSpec {
  const serial = device.serial?.trim();
  return { match: { vendorId: device.vendorId, productId: device.productId, ...(serial ? { serial } : {}) } };
}

/** Whether a rule of VM `vmId` already takes the device. */
export function ruleOfVmMatches(device: Pick<HostUsbDeviceSummary, 'wantedBy'>, vmId: string): boolean {
  return (device.wantedBy ?? []).some((w) => w.vm === vmId);
}

/** Which rule would take the device, from VM `vmId`'s point of view, or null: "Rule 2 of this VM (46f4:0001)". */
export function ruleText(device: Pick<HostUsbDeviceSummary, 'wantedBy'>, vmId: string): string | null {
  const all = device.wantedBy ?? [];
  if (all.length === 0) return null;
  const said = all.map((w) => `rule ${w.rule + 1} of ${w.vm === vmId ? 'this VM' : `VM ${w.vmName}`} (${w.text})`);
  const text = said.join('; ');
  return `Taken by ${text}${all.length > 1 ? ' (the first running VM to see it takes it)' : ''}`;
}

/** Whether a row offers "Always attach to this VM": a VM with a USB controller, no rule of it taking the device yet, not a hub. */
export function offersAlwaysAttach(device: Pick<HostUsbDeviceSummary, 'wantedBy' | 'isHub'>, vmId: string, vmHasUsb: boolean): boolean {
  return vmHasUsb && !device.isHub && !ruleOfVmMatches(device, vmId);
}
