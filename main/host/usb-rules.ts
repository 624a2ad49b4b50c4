// Auto-attach rules and re-enumeration, as pure functions and one planner without I/O.
// A VM's rules (config `usb.rules`) name host USB devices it takes whenever they appear
// while it runs; a device that leaves the VM unasked (unplugged, a DFU or bootloader switch
// that changes VID:PID, a modem resetting) and comes back on the same host port path within
// the re-enumeration window goes back to the same VM, on the same guest port if free, with
// or without a rule. The VM host feeds the planner each new host device list and carries
// out what it answers (vm-host.ts); refusals (another VM holds it, the host needs it) are
// the attach's own, logged by the VM host.

/** What a rule looks for; every field given must match, at least one is given. */
export interface UsbRuleMatch {
  vendorId?: number;
  productId?: number;
  /** The iSerialNumber string, exactly. */
  serial?: string;
  /** bDeviceClass, or any interface's bInterfaceClass (most devices say 0 and name the class per interface). */
  classCode?: number;
  /** The host port path, sysfs's name ("1-1.4": bus 1, root port 1, hub port 4). */
  portPath?: string;
}

export interface UsbRule {
  match: UsbRuleMatch;
  /** The guest root-hub port (1..8) to put it on; absent: the first free port of its speed. */
  port?: number;
  /** Take it even when the host needs it (its only keyboard, a mounted disk). Default false. */
  force?: boolean;
}

export const USB_MAX_RULES = 32;
export const USB_REENUMERATION_WINDOW_MS = 5000;
export const USB_REENUMERATION_WINDOW_MAX_MS = 60000;
const GUEST_PORTS = 8;

/** A host device as the planner needs it (HostUsbDeviceInfo has these fields). */
export interface RuleDevice {
  sysfsName: string;
  busNumber: number;
  deviceAddress: number;
  vendorId: number;
  productId: number;
  serial: string | null;
  classCode: number;
  interfaces: { classCode: number }[];
  isHub: boolean;
  /** Its name on the other bus of the same socket (an xHCI's USB 2 / USB 3 pair), if known. */
  peerName?: string | null;
}

export class UsbRuleError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsbRuleError';
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A 16-bit ID or 8-bit class: a number, or hex text "46f4" / "0x46f4". */
function idField(v: unknown, max: number, at: string): number {
  let n: number | null = null;
  if (typeof v === 'number' && Number.isInteger(v)) n = v;
  else if (typeof v === 'string' && /^(0x)?[0-9a-fA-F]{1,4}$/.test(v.trim())) n = parseInt(v.trim().replace(/^0x/i, ''), 16);
  const digits = max === 0xffff ? 4 : 2;
  if (n === null || n < 0 || n > max) {
    throw new UsbRuleError(`${at} must be a number from 0 to 0x${max.toString(16)} (or hex text like "0x${'f'.repeat(digits)}")`);
  }
  return n;
}

const PORT_PATH = /^\d{1,3}-\d{1,3}(\.\d{1,3}){0,6}$/;

/**
 * One rule from JSON (config file, API, CLI): errors name the field, e.g.
 * `usb.rules[0].match.vendorId must be a number from 0 to 0xffff`. IDs may be numbers or hex text.
 */
export function usbRuleFromJson(v: unknown, at: string): UsbRule {
  if (!isRecord(v)) throw new UsbRuleError(`${at} must be an object like {"match": {"vendorId": "0x46f4"}}`);
  for (const k of Object.keys(v)) if (k !== 'match' && k !== 'port' && k !== 'force') throw new UsbRuleError(`${at}: unknown field "${k}"`);
  const m = v.match;
  if (!isRecord(m)) throw new UsbRuleError(`${at}.match must be an object with vendorId, productId, serial, classCode or portPath`);
  const match: UsbRuleMatch = {};
  for (const k of Object.keys(m)) {
    const f = `${at}.match.${k}`;
    const value = m[k];
    if (value === undefined) continue;
    switch (k) {
      case 'vendorId': match.vendorId = idField(value, 0xffff, f); break;
      case 'productId': match.productId = idField(value, 0xffff, f); break;
      case 'classCode': match.classCode = idField(value, 0xff, f); break;
      case 'serial':
        if (typeof value !== 'string' || value.length === 0 || value.length > 255) throw new UsbRuleError(`${f} must be a non-empty string of at most 255 characters`);
        match.serial = value;
        break;
      case 'portPath':
        if (typeof value !== 'string' || !PORT_PATH.test(value)) throw new UsbRuleError(`${f} must be a host port path like "1-1" or "3-2.4" (porthole usb host shows them)`);
        match.portPath = value;
        break;
      default:
        throw new UsbRuleError(`${at}.match: unknown field "${k}" (use vendorId, productId, serial, classCode or portPath)`);
    }
  }
  if (Object.keys(match).length === 0) throw new UsbRuleError(`${at}.match must name at least one of vendorId, productId, serial, classCode, portPath`);
  if (match.productId !== undefined && match.vendorId === undefined) throw new UsbRuleError(`${at}.match.productId needs a vendorId too`);
  const rule: UsbRule = { match };
  if (v.port !== undefined) {
    if (typeof v.port !== 'number' || !Number.isInteger(v.port) || v.port < 1 || v.port > GUEST_PORTS) {
      throw new UsbRuleError(`${at}.port must be a whole number from 1 to ${GUEST_PORTS}`);
    }
    rule.port = v.port;
  }
  if (v.force !== undefined) {
    if (typeof v.force !== 'boolean') throw new UsbRuleError(`${at}.force must be true or false`);
    if (v.force) rule.force = true;
  }
  return rule;
}

/** A list of rules from JSON; `at` names the list ("usb.rules"). */
export function usbRulesFromJson(v: unknown, at: string): UsbRule[] {
  if (!Array.isArray(v)) throw new UsbRuleError(`${at} must be a list of rules like [{"match": {"vendorId": "0x46f4", "productId": "0x0001"}}]`);
  if (v.length > USB_MAX_RULES) throw new UsbRuleError(`${at}: at most ${USB_MAX_RULES} rules`);
  return v.map((r, i) => usbRuleFromJson(r, `${at}[${i}]`));
}

/** The re-enumeration window from JSON (milliseconds, 0 turns it off). */
export function reenumerationWindowFromJson(v: unknown, at: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > USB_REENUMERATION_WINDOW_MAX_MS) {
    throw new UsbRuleError(`${at} must be a whole number of milliseconds from 0 to ${USB_REENUMERATION_WINDOW_MAX_MS}`);
  }
  return v;
}

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
