// The USB transfer list's logic: watchUsbTransfers' records (a submit and a complete per
// transfer) folded into one row per transfer, kept to the newest MAX_ROWS, and filtered by
// device (port) and endpoint. Pure; type-only imports, so unit tests load it on its own.
import type { UsbTransferRecord } from '../../main/api/contract';

/** Rows the list keeps; older ones fall off. */
export const MAX_TRANSFER_ROWS = 1000;

export interface TransferRow {
  /** Unique within the list (React key). */
  key: number;
  id: number;
  atMs: number;
  port: number;
  device: string | null;
  endpoint: number;
  direction: 'in' | 'out';
  type: UsbTransferRecord['type'];
  /** Bytes asked for, and moved (null until complete). */
  requested: number;
  moved: number | null;
  status: string;
  setup: string | null;
  /** Submit to complete, when both were seen. */
  latencyMs: number | null;
  data: string;
}

export interface TransferFilter {
  /** null: every port. */
  port: number | null;
  /** An endpointLabel, or null: every endpoint. */
  endpoint: string | null;
}

let nextKey = 1;

/** "EP 0" for control, else "EP 1 IN" / "EP 2 OUT". */
export function endpointLabel(row: { endpoint: number; direction: 'in' | 'out'; type: string }): string {
  return row.endpoint === 0 && row.type === 'control' ? 'EP 0' : `EP ${row.endpoint} ${row.direction.toUpperCase()}`;
}

/** Adds a batch to the rows (a new array, newest last, at most `max`). */
export function applyTransfers(rows: readonly TransferRow[], records: readonly UsbTransferRecord[], max = MAX_TRANSFER_ROWS): TransferRow[] {
  const out = rows.slice();
  // Open rows by port/id: a complete finds the submit it belongs to.
  const open = new Map<string, number>();
  out.forEach((r, i) => { if (r.moved === null) open.set(`${r.port}/${r.id}`, i); });
  for (const rec of records) {
    const k = `${rec.port}/${rec.id}`;
    if (rec.event === 'submit') {
      out.push({
        key: nextKey++, id: rec.id, atMs: rec.atMs, port: rec.port, device: rec.device, endpoint: rec.endpoint, direction: rec.direction,
        type: rec.type, requested: rec.length, moved: null, status: rec.status, setup: rec.setup?.text ?? null, latencyMs: null,
        data: rec.data,
      });
      open.set(k, out.length - 1);
      continue;
    }
    const at = open.get(k);
    if (at !== undefined) {
      const r = out[at];
      out[at] = { ...r, moved: rec.length, status: rec.status, latencyMs: rec.atMs - r.atMs, data: rec.direction === 'in' ? rec.data : r.data };
      open.delete(k);
    } else {
      // Submitted before the list started watching.
      out.push({
        key: nextKey++, id: rec.id, atMs: rec.atMs, port: rec.port, device: rec.device, endpoint: rec.endpoint, direction: rec.direction,
        type: rec.type, requested: rec.length, moved: rec.length, status: rec.status, setup: null, latencyMs: null, data: rec.data,
      });
    }
  }
  return out.length > max ? out.slice(out.length - max) : out;
}

export function filterTransfers(rows: readonly TransferRow[], filter: TransferFilter): TransferRow[] {
  return rows.filter((r) => (filter.port === null || r.port === filter.port) && (filter.endpoint === null || endpointLabel(r) === filter.endpoint));
}

/** The ports and endpoints seen, for the filter menus (endpoints of the chosen port only). */
export function filterChoices(rows: readonly TransferRow[], port: number | null): { ports: { port: number; device: string | null }[]; endpoints: string[] } {
  const ports = new Map<number, string | null>();
  const endpoints = new Set<string>();
  for (const r of rows) {
    if (!ports.has(r.port) || ports.get(r.port) === null) ports.set(r.port, r.device);
    if (port === null || r.port === port) endpoints.add(endpointLabel(r));
  }
  return {
    ports: [...ports].sort((a, b) => a[0] - b[0]).map(([p, device]) => ({ port: p, device })),
    endpoints: [...endpoints].sort(),
  };
}

/** Seconds since `startMs`, to the microsecond: "12.345678". */
export function transferTime(atMs: number, startMs: number): string {
  return ((atMs - startMs) / 1000).toFixed(6);
}

/** "512 of 512" / "13" / "0 of 64 (short)". */
export function transferLength(row: TransferRow): string {
  if (row.moved === null) return `${row.requested}`;
  if (row.direction === 'out' || row.moved === row.requested) return `${row.moved}`;
  return `${row.moved} of ${row.requested}`;
}
