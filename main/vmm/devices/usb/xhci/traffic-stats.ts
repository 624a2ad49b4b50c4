// Per device and endpoint USB counters in the statistics registry: bytes, completed transfers
// and summed completion latency for every endpoint of every device on the controller's ports
// (emulated and passthrough alike). Group `usb<port>-<kind>` (kind from the device's name:
// storage, keyboard, tablet, serial, host), names `ep<n>[-in|-out]-<bytes|transfers|latency-us>`
// (shared/stats.ts). Slots are looked up once per endpoint and device; a completion then costs
// three array stores, no allocation.
import type { StatsRegistry } from '../../../shared/stats';
import { MAX_PORTS } from './constants';

const DCIS = 32;
/** Per endpoint: bytes, transfers, latency sum. */
const PER_EP = 3;
const UNKNOWN = -1;
/** The registry was full: this endpoint is not counted. */
const NONE = -2;

/** Device names' first words that differ from the config's kinds. */
const KIND_NAMES: Record<string, string> = { kbd: 'keyboard' };

/** The counter group of a device on a port: "usb3-storage", "usb5-keyboard", "usb2-host". */
export function usbStatsGroup(port: number, deviceName: string): string {
  const word = (deviceName.split(' ')[0] ?? '').replace(/^usb-/, '').replace(/[^A-Za-z0-9-]+/g, '').toLowerCase();
  return `usb${port}-${KIND_NAMES[word] ?? (word || 'device')}`;
}

/** The endpoint part of a counter name: DCI 1 is the default control pipe, "ep0". */
export function endpointLabel(dci: number): string {
  if (dci <= 1) return 'ep0';
  return `ep${dci >>> 1}-${(dci & 1) === 1 ? 'in' : 'out'}`;
}

export class UsbTrafficStats {
  private readonly counts: Uint32Array;
  /** Counter group per port (index = port number), null while empty. */
  private readonly groups: (string | null)[] = new Array<string | null>(MAX_PORTS + 1).fill(null);
  /** Registry slots by (port, DCI, counter): UNKNOWN until the endpoint's first completion. */
  private readonly slots = new Int32Array((MAX_PORTS + 1) * DCIS * PER_EP).fill(UNKNOWN);

  constructor(private readonly registry: StatsRegistry) {
    this.counts = registry.counts;
  }

  /** A device was plugged into `port`: its endpoints count under its group from now on. */
  plugged(port: number, deviceName: string): void {
    if (!(port >= 1 && port <= MAX_PORTS)) return;
    this.groups[port] = usbStatsGroup(port, deviceName);
    this.slots.fill(UNKNOWN, port * DCIS * PER_EP, (port + 1) * DCIS * PER_EP);
  }

  /** The device on `port` was unplugged: its group leaves the samples. */
  unplugged(port: number): void {
    if (!(port >= 1 && port <= MAX_PORTS)) return;
    const group = this.groups[port];
    this.groups[port] = null;
    this.slots.fill(UNKNOWN, port * DCIS * PER_EP, (port + 1) * DCIS * PER_EP);
    if (group !== null) this.registry.retireGroup(group);
  }

  /** A transfer on endpoint `dci` of the device on `port` completed after `latencyMs`, moving `bytes`. */
  completed(port: number, dci: number, bytes: number, latencyMs: number): void {
    if (!(port >= 1 && port <= MAX_PORTS) || !(dci >= 1 && dci < DCIS)) return;
    const at = (port * DCIS + dci) * PER_EP;
    let first = this.slots[at];
    if (first === UNKNOWN) first = this.register(port, dci, at);
    if (first === NONE) return;
    const counts = this.counts;
    counts[first] += bytes;
    counts[this.slots[at + 1]] += 1;
    counts[this.slots[at + 2]] += latencyMs > 0 ? Math.round(latencyMs * 1000) : 0;
  }

  private register(port: number, dci: number, at: number): number {
    const group = this.groups[port];
    if (group === null) {
      this.slots[at] = NONE;
      return NONE;
    }
    const ep = endpointLabel(dci);
    const bytes = this.registry.tryCounter(group, `${ep}-bytes`, 'bytes');
    const transfers = this.registry.tryCounter(group, `${ep}-transfers`);
    const latency = this.registry.tryCounter(group, `${ep}-latency-us`);
    if (bytes < 0 || transfers < 0 || latency < 0) {
      this.slots[at] = NONE;
      return NONE;
    }
    this.slots[at] = bytes;
    this.slots[at + 1] = transfers;
    this.slots[at + 2] = latency;
    return bytes;
  }
}
