// The vfio bench's readers of L2's /proc/interrupts and of porthole run --stats (test/bench/vfio.ts).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseExitTable, parseNvmeMsix, processCpuMs } from '../bench/vfio';
import { formatStats } from '../../main/cli/stats';
import { parseArgs, venueFor } from '../bench/run';

test('nvme MSI-X lines of /proc/interrupts and their counts on every CPU', () => {
  const text = [
    '           CPU0       CPU1',
    '  0:         35          0   IO-APIC   2-edge      timer',
    ' 24:       4107         12   PCI-MSI 393216-edge      nvme0q0, nvme0q1',
    ' 25:          3          0   PCI-MSIX-0000:00:18.0   1-edge      nvme0q2',
    ' 26:         99          0   PCI-MSI 16384-edge      virtio0-config',
    'NMI:          0          0   Non-maskable interrupts',
  ].join('\n');
  const r = parseNvmeMsix(text);
  assert.equal(r.lines.length, 2);
  assert.equal(r.total, 4107 + 12 + 3);
  assert.deepEqual(parseNvmeMsix('  0: 35 IO-APIC 2-edge timer\n'), { lines: [], total: 0 });
});

test('vfio is a bench name, run only when named, in the rig', () => {
  assert.deepEqual(parseArgs(['vfio', '--runs', '2']).benches, ['vfio']);
  assert.ok(!parseArgs([]).benches.includes('vfio'));
  assert.equal(venueFor('vfio', undefined, true), 'rig');
});

test('the exit table of porthole run --stats, read back as it is printed', () => {
  const table = formatStats({ exits: { io: 120, mmio: 46, hlt: 3000 }, devices: [], kicks: 0, apExits: 0 });
  assert.deepEqual(parseExitTable(`porthole: guest powered off\n${table}`), { hlt: 3000, io: 120, mmio: 46, total: 3166 });
  assert.equal(parseExitTable('no table here'), null);
});

test('a process\'s CPU time from /proc/PID/stat, a command name with spaces and parentheses included', () => {
  const stat = '4242 (node (vm) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 25 0 0 20 0 11 0 100 0 0';
  assert.equal(processCpuMs(0, stat), 1750);
  assert.ok(processCpuMs(process.pid) >= 0);
  assert.ok(Number.isNaN(processCpuMs(-1)));
});
