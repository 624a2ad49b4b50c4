// PCI assignment (issue 11 item 6): validators for VmSpec.pciAssign and the assignPciDevice /
// returnPciDevice arguments. Pure, no Node or DOM imports: main validates with them and the
// renderer may too. Messages are sentences for the UI.
import { ApiError, PCI_ASSIGN_MAX, type PciAssignRequest, type VmPciAssignSpec } from './contract';

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Domain:bus:device.function with device 00..1f, as sysfs names it. */
const FULL_ADDRESS = /^[0-9a-f]{4}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$/;
const SHORT_ADDRESS = /^[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$/;

/** "01:00.0" → "0000:01:00.0", upper case → lower case; null when it is not a PCI address. */
export function pciAddressOf(input: unknown): string | null {
  if (typeof input !== 'string' || input.length > 32) return null;
  const t = input.trim().toLowerCase();
  if (SHORT_ADDRESS.test(t)) return `0000:${t}`;
  return FULL_ADDRESS.test(t) ? t : null;
}

function describeValue(v: unknown): string {
  if (typeof v === 'string') return `"${v.length > 40 ? `${v.slice(0, 40)}…` : v}"`;
  if (v === null || v === undefined) return 'nothing';
  return `a ${Array.isArray(v) ? 'list' : typeof v}`;
}

const ADDRESS_HINT = 'a PCI address like 0000:01:00.0 (or 01:00.0), as listPciDevices shows it';

/** A PCI address argument (returnPciDevice), normalized to "0000:01:00.0". */
export function parsePciAddress(input: unknown): string {
  const a = pciAddressOf(input);
  if (a === null) throw new ApiError('invalid-argument', `The PCI device must be ${ADDRESS_HINT}, not ${describeValue(input)}.`);
  return a;
}

/** assignPciDevice's request: `{ address, force? }`, nothing else. */
export function parsePciAssignRequest(input: unknown): PciAssignRequest {
  if (!isRecord(input)) throw new ApiError('invalid-argument', 'The PCI assignment must be { address, force }, e.g. { "address": "0000:01:00.0" }.');
  for (const k of Object.keys(input)) {
    if (k !== 'address' && k !== 'force') throw new ApiError('invalid-argument', `"${k}" is not a PCI assignment setting (only address and force).`);
  }
  const address = parsePciAddress(input.address);
  if (input.force !== undefined && typeof input.force !== 'boolean') {
    throw new ApiError('invalid-argument', 'The PCI assignment\'s force must be true or false.');
  }
  return { address, ...(input.force === true ? { force: true } : {}) };
}

/** Problems of a VmSpec's `pciAssign` as [index or null for the list, what is wrong]; [] when good. */
export function pciAssignListProblems(v: unknown): { index: number | null; what: string }[] {
  if (!Array.isArray(v)) return [{ index: null, what: 'must be a list of { address, force }' }];
  const out: { index: number | null; what: string }[] = [];
  if (v.length > PCI_ASSIGN_MAX) out.push({ index: null, what: `may have at most ${PCI_ASSIGN_MAX} entries` });
  const seen = new Map<string, number>();
  v.slice(0, PCI_ASSIGN_MAX).forEach((e, i) => {
    if (!isRecord(e)) {
      out.push({ index: i, what: 'must be { address, force }' });
      return;
    }
    const extra = Object.keys(e).find((k) => k !== 'address' && k !== 'force');
    if (extra !== undefined) out.push({ index: i, what: `has "${extra}", which is not a setting (only address and force)` });
    const a = typeof e.address === 'string' && FULL_ADDRESS.test(e.address) ? e.address : null;
    if (a === null) out.push({ index: i, what: `must name a PCI address like 0000:01:00.0, not ${describeValue(e.address)}` });
    if (e.force !== undefined && typeof e.force !== 'boolean') out.push({ index: i, what: 'force must be true or false' });
    if (a !== null) {
      const other = seen.get(a);
      if (other !== undefined) out.push({ index: i, what: `is ${a} again (PCI device ${other + 1} is too)` });
      seen.set(a, i);
    }
  });
  return out;
}

/** A validated copy (the list was checked by pciAssignListProblems). */
export function copyPciAssign(list: readonly VmPciAssignSpec[]): VmPciAssignSpec[] {
  return list.map((e) => ({ address: e.address, ...(e.force === true ? { force: true } : {}) }));
}
