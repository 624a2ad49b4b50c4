// MachineStats (porthole run --stats, the manager's stats call): one launch's counts,
// derived from the statistics registry.

export interface MachineStats {
  /** Exits by reason (group 'exits'), all vCPUs. */
  exits: Record<string, number>;
  /** PIO and MMIO accesses by device (groups with pio-/mmio-reads and -writes). */
  devices: { name: string; reads: number; writes: number }[];
  kicks: number;
  apExits: number;
}

const READS = new Set(['pio-reads', 'mmio-reads']);
const WRITES = new Set(['pio-writes', 'mmio-writes']);

/**
 * Counts since `baseline` (the registry as the launch found it; counters wrap at 2^32,
 * and a launch stays far below that between samples of the same slot).
 */
export function machineStatsFrom(
  schema: readonly { group: string; name: string }[], counts: Uint32Array, baseline: Uint32Array,
): MachineStats {
  const exits: Record<string, number> = {};
  const byDevice = new Map<string, { name: string; reads: number; writes: number }>();
  let kicks = 0;
  let apExits = 0;
  schema.forEach((spec, slot) => {
    const n = (Atomics.load(counts, slot) - baseline[slot]) >>> 0;
    if (n === 0) return;
    if (spec.group === 'exits') exits[spec.name] = n;
    else if (spec.group === 'vcpu' && spec.name === 'kicks') kicks = n;
    else if (spec.group === 'vcpu' && spec.name === 'ap-exits') apExits = n;
    else if (READS.has(spec.name) || WRITES.has(spec.name)) {
      let d = byDevice.get(spec.group);
      if (!d) byDevice.set(spec.group, d = { name: spec.group, reads: 0, writes: 0 });
      if (READS.has(spec.name)) d.reads += n;
      else d.writes += n;
    }
  });
  return { exits, devices: [...byDevice.values()], kicks, apExits };
}
