import type { MachineStats } from '../vmm/machine/machine';

/** The --stats table: exits by reason, then by device. */
export function formatStats(s: MachineStats): string {
  const lines = ['VM exits by reason:'];
  const reasons = Object.entries(s.exits).sort((a, b) => b[1] - a[1]);
  const total = reasons.reduce((n, [, c]) => n + c, 0);
  for (const [reason, count] of reasons) lines.push(`  ${reason.padEnd(16)} ${String(count).padStart(12)}`);
  lines.push(`  ${'total'.padEnd(16)} ${String(total).padStart(12)}`);
  lines.push('Accesses by device:');
  lines.push(`  ${'device'.padEnd(16)} ${'reads'.padStart(12)} ${'writes'.padStart(12)}`);
  for (const d of [...s.devices].sort((a, b) => b.reads + b.writes - a.reads - a.writes)) {
    lines.push(`  ${d.name.padEnd(16)} ${String(d.reads).padStart(12)} ${String(d.writes).padStart(12)}`);
  }
  lines.push(`vCPU kicks: ${s.kicks}, AP exits handled: ${s.apExits}`);
  return lines.join('\n') + '\n';
}
