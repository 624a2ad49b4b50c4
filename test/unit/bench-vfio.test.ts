// The vfio bench's readers of L2's /proc/interrupts and of porthole run --stats (test/bench/vfio.ts).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseExitTable, parseNvmeMsix, processCpuMs } from '../bench/vfio';
import { formatStats } from '../../main/cli/stats';
import { parseArgs, venueFor } from '../bench/run';
import { parsePingMean, parseTimedBytes } from '../bench/vfio-nic-usb';

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

test('the e1000 part reads busybox ping\'s mean and L2\'s timed byte counts, and refuses what is missing', () => {
  assert.equal(parsePingMean('20 packets transmitted, 20 packets received, 0% packet loss\nround-trip min/avg/max = 0.421/0.610/1.020 ms\n'), 0.61);
  assert.ok(Number.isNaN(parsePingMean('ping: sendto: Network is unreachable\n')));
  assert.deepEqual(parseTimedBytes('elapsed 6.64 14.02\nbytes 16777216\n'), { seconds: 14.02 - 6.64, bytes: 16777216 });
  // A stream that ended with nothing prints "bytes" alone.
  assert.ok(Number.isNaN(parseTimedBytes('elapsed 1.00 2.00\nbytes\n').bytes));
  assert.ok(Number.isNaN(parseTimedBytes('bytes 5\n').seconds));
});

test('--vfio-parts picks the vfio bench\'s parts, every part by default', () => {
  assert.deepEqual(parseArgs(['vfio']).vfioParts, ['nvme', 'e1000', 'usb-controller']);
  assert.deepEqual(parseArgs(['vfio', '--vfio-parts', 'e1000,usb-controller']).vfioParts, ['e1000', 'usb-controller']);
  assert.throws(() => parseArgs(['vfio', '--vfio-parts', 'e1000,nic']), /--vfio-parts: "e1000,nic" is not a list of nvme, e1000, usb-controller/);
  assert.throws(() => parseArgs(['vfio', '--vfio-parts', '']), /--vfio-parts/);
});
