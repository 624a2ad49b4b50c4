// USB auto-attach rules as data: their shape and their checking from JSON (config files, the
// API, the CLI). Pure, so the API schema (which the renderer imports) can check them too; the
// matching and the planner live in main/host/usb-rules.ts.

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
