// Auto-attach rules and re-enumeration, as pure functions and one planner without I/O.
// A VM's rules (config `usb.rules`) name host USB devices it takes whenever they appear
// while it runs; a device that leaves the VM unasked (unplugged, a DFU or bootloader switch
// that changes VID:PID, a modem resetting) and comes back on the same host port path within
// the re-enumeration window goes back to the same VM, on the same guest port if free, with
// or without a rule. The VM host feeds the planner each new host device list and carries
// out what it answers (vm-host.ts); refusals (another VM holds it, the host needs it) are
// the attach's own, logged by the VM host.

import {
  type RuleDevice, type UsbRule, USB_REENUMERATION_WINDOW_MS,
} from '../api/usb-rule';

export * from '../api/usb-rule';

export function ruleMatches(rule: UsbRule, d: RuleDevice): boolean {
  const m = rule.match;
  if (d.isHub) return false;
  if (m.vendorId !== undefined && d.vendorId !== m.vendorId) return false;
  if (m.productId !== undefined && d.productId !== m.productId) return false;
  if (m.serial !== undefined && d.serial !== m.serial) return false;
  if (m.portPath !== undefined && d.sysfsName !== m.portPath) return false;
  if (m.classCode !== undefined && d.classCode !== m.classCode && !d.interfaces.some((i) => i.classCode === m.classCode)) return false;
  return true;
}

/** The index of the first rule that takes `d`, or -1. */
export function firstMatchingRule(rules: readonly UsbRule[], d: RuleDevice): number {
  return rules.findIndex((r) => ruleMatches(r, d));
}

function hex(n: number, digits: number): string {
  return n.toString(16).padStart(digits, '0');
}

/** A rule in words: "46f4:0001 serial RIGSTICK0 on port 1-1 (guest port 5, forced)". */
export function describeUsbRule(rule: UsbRule): string {
  const m = rule.match;
  const parts: string[] = [];
  if (m.vendorId !== undefined) parts.push(m.productId === undefined ? `vendor ${hex(m.vendorId, 4)}` : `${hex(m.vendorId, 4)}:${hex(m.productId, 4)}`);
  if (m.serial !== undefined) parts.push(`serial ${m.serial}`);
  if (m.classCode !== undefined) parts.push(`class ${hex(m.classCode, 2)}`);
  if (m.portPath !== undefined) parts.push(`on host port ${m.portPath}`);
  const extra = [rule.port === undefined ? null : `guest port ${rule.port}`, rule.force ? 'forced' : null].filter((x) => x !== null);
  return parts.join(' ') + (extra.length > 0 ? ` (${extra.join(', ')})` : '');
}

/** A host device in this VM, as the planner sees it. */
export interface HeldDevice {
  sysfsName: string;
  busNumber: number;
  deviceAddress: number;
  vendorId: number;
  productId: number;
  /** The guest port it is on. */
  guestPort: number;
  force: boolean;
}

export type AutoAttachAction =
  /** A device in this VM left the host: unplug it from the guest (the planner remembers its port). */
  | { kind: 'gone'; sysfsName: string; guestPort: number }
  /** Attach host device `sysfsName` (on `port` when given); `why` is the log's reason. */
  | { kind: 'attach'; sysfsName: string; port?: number; force: boolean; why: string };

interface Departed {
  guestPort: number;
  vendorId: number;
  productId: number;
  force: boolean;
  leftAt: number;
}

/**
 * Decides, from successive host device lists, what a running VM attaches. A device is
 * considered once per appearance (its port path plus bus address: a re-enumerated device
 * gets a new address), so a device the user gave back stays with the host until replugged,
 * and a refused one is not retried on every list.
 */
export class UsbAutoAttach {
  private seen = new Set<string>();
  private readonly departed = new Map<string, Departed>();

  constructor(public rules: UsbRule[], readonly windowMs = USB_REENUMERATION_WINDOW_MS) {}

  /** A device of this VM left the host (its transfers say so, or the list lost it). Idempotent. */
  noteDeparted(d: HeldDevice, now: number): void {
    if (this.windowMs <= 0 || this.departed.has(d.sysfsName)) return;
    this.departed.set(d.sysfsName, { guestPort: d.guestPort, vendorId: d.vendorId, productId: d.productId, force: d.force, leftAt: now });
  }

  /** Whether a device that left port path `sysfsName` may still come back to this VM. */
  awaiting(sysfsName: string, now: number): boolean {
    const d = this.departed.get(sysfsName);
    return d !== undefined && now - d.leftAt <= this.windowMs;
  }

  /** What to do about the host's device list `devices` now; `held`: the host devices in this VM. */
  update(devices: readonly RuleDevice[], held: readonly HeldDevice[], now: number): AutoAttachAction[] {
    const actions: AutoAttachAction[] = [];
    const present = new Set(devices.map(identity));
    for (const h of held) {
      if (present.has(identity(h))) continue;
      this.noteDeparted(h, now);
      actions.push({ kind: 'gone', sysfsName: h.sysfsName, guestPort: h.guestPort });
    }
    for (const [name, d] of this.departed) if (now - d.leftAt > this.windowMs) this.departed.delete(name);
    const heldNow = new Set(held.map(identity));
    const seen = new Set<string>();
    for (const d of devices) {
      const id = identity(d);
      seen.add(id);
      if (this.seen.has(id) || heldNow.has(id) || d.isHub) continue;
      // The same socket: the same port path, or its peer on the controller's other bus
      // (a SuperSpeed device re-enumerating at high speed moves from one to the other).
      const key = this.departed.has(d.sysfsName) ? d.sysfsName : d.peerName ?? null;
      const back = key === null ? undefined : this.departed.get(key);
      if (back !== undefined && key !== null) {
        this.departed.delete(key);
        const was = `${hex(back.vendorId, 4)}:${hex(back.productId, 4)}`;
        const now4 = `${hex(d.vendorId, 4)}:${hex(d.productId, 4)}`;
        actions.push({
          kind: 'attach', sysfsName: d.sysfsName, port: back.guestPort, force: back.force,
          why: `${was} re-enumerated as ${now4} on host port ${d.sysfsName}${key === d.sysfsName ? '' : ` (was ${key})`} within ${Math.round((now - back.leftAt) / 100) / 10} s`,
        });
        continue;
      }
      const r = firstMatchingRule(this.rules, d);
      if (r < 0) continue;
      const rule = this.rules[r];
      actions.push({
        kind: 'attach', sysfsName: d.sysfsName, ...(rule.port === undefined ? {} : { port: rule.port }), force: rule.force === true,
        why: `rule ${r + 1} (${describeUsbRule(rule)}) matches ${hex(d.vendorId, 4)}:${hex(d.productId, 4)} on host port ${d.sysfsName}`,
      });
    }
    this.seen = seen;
    return actions;
  }
}

function identity(d: { sysfsName: string; busNumber: number; deviceAddress: number }): string {
  return `${d.sysfsName}#${d.busNumber}:${d.deviceAddress}`;
}
