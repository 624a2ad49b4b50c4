// A VM spec's disks, CD-ROM drive and NICs: the renderer-safe shape checks (vmSpecProblems),
// main's checks with the VMM's own validators (specDeviceProblems, specFileProblems), the
// machine config a spec becomes, the CD-ROM call validators, `porthole cdrom` parsing, and the
// app's NIC model list against the VMM's.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { defaultVmSpec, type VmSpec } from '../../main/api/contract';
import { parseCdromEjectSpec, parseCdromInsertSpec } from '../../main/api/media-input';
import { NIC_BACKEND_CHOICES, NIC_MODEL_CHOICES } from '../../main/api/nic-choices';
import { parseVmSpec, vmSpecProblems } from '../../main/api/schema';
import { parseArgs } from '../../main/cli/args';
import { isoFileProblem, machineConfigOf, specDeviceProblems, specFileProblems } from '../../main/manager/machine-config';
import { NIC_MODELS } from '../../main/vmm/config';

const noFiles = (f: string): never => { throw new Error(`no file ${f}`); };
const messages = (spec: unknown) => vmSpecProblems(spec).map((p) => `${p.field}: ${p.message}`);

function spec(extra: Partial<VmSpec>): VmSpec {
  return { ...defaultVmSpec(), ...extra };
}

test('shape: good disks, CD-ROM and NICs pass; every bad value is a sentence naming its field', () => {
  assert.deepEqual(messages(spec({
    disks: [{ path: '/img/a.qcow2', bus: 'sata', format: 'qcow2', readOnly: true }, { path: '/img/b.raw' }],
    cdrom: { path: '', boot: false },
    nics: [{ model: 'virtio', backend: { kind: 'socket', mode: 'listen', path: '/tmp/n.sock' }, mac: '52:54:00:12:34:56' }, { model: 'virtio', backend: { kind: 'none' } }],
  })), []);
  assert.deepEqual(messages(spec({
    disks: [{ path: 'rel.img', bus: 'scsi' as never, format: 'vmdk' as never, readOnly: 'yes' as never }],
  })), [
    'disks.0.path: Disk 1 image must be an absolute path (starting with /).',
    'disks.0.bus: Disk 1 bus must be "virtio" or "sata".',
    'disks.0.format: Disk 1 format must be "raw" or "qcow2" (or left out to detect it).',
    'disks.0.readOnly: Disk 1 read-only setting must be true or false.',
  ]);
  assert.deepEqual(messages(spec({ cdrom: { path: 'x.iso', boot: 1 as never } })), [
    'cdrom.path: CD-ROM ISO image must be an absolute path (starting with /).',
    'cdrom.boot: Boot from CD must be true or false.',
  ]);
  assert.deepEqual(messages(spec({ boot: { kind: 'linux', kernel: '/k', initrd: '', cmdline: '' }, cdrom: { path: '/a.iso', boot: true } })), [
    'cdrom.boot: Boot from CD needs the firmware (SeaBIOS) boot source.',
  ]);
  assert.deepEqual(messages(spec({ boot: { kind: 'firmware', firmware: '', disks: [], cdrom: '/a.iso', optionRoms: [] }, cdrom: { path: '/b.iso' } })), [
    'cdrom: CD-ROM is given twice: leave the firmware\'s ISO image empty and use the CD-ROM drive.',
  ]);
  assert.deepEqual(messages(spec({
    nics: [
      { model: 'e1000', backend: { kind: 'tap' } as never, mac: '01:00:5e:00:00:01', pcap: 'x.pcapng' },
      { model: 'virtio', backend: { kind: 'socket', mode: 'both', path: 'rel' } },
      { model: 'virtio', backend: { kind: 'carrier-pigeon' } },
    ],
  })), [
    `nics.0.model: NIC 1 model must be one of ${NIC_MODEL_CHOICES.map((c) => c.model).join(', ')}.`,
    'nics.0.mac: NIC 1 MAC address must be a unicast address (its first byte even).',
    'nics.0.pcap: NIC 1 capture file must be an absolute path (starting with /).',
    'nics.0.backend.ifname: NIC 1 interface is required.',
    'nics.1.backend.mode: NIC 2 mode must be "listen" or "connect".',
    'nics.1.backend.path: NIC 2 socket path must be an absolute path (starting with /).',
    `nics.2.backend.kind: NIC 3 backend must be one of ${NIC_BACKEND_CHOICES.map((c) => c.kind).join(', ')}.`,
  ]);
  assert.deepEqual(messages(spec({ nics: new Array(5).fill({ model: 'virtio', backend: { kind: 'none' } }) })), ['nics: Network cards may have at most 4 entries.']);
  // Only known fields survive parsing.
  const parsed = parseVmSpec(spec({ nics: [{ model: 'virtio', backend: { kind: 'tap', ifname: 'tap0' } }], disks: [{ path: '/a.img' }], cdrom: { path: '' } }));
  assert.deepEqual([parsed.nics, parsed.disks, parsed.cdrom], [[{ model: 'virtio', backend: { kind: 'tap', ifname: 'tap0' } }], [{ path: '/a.img' }], { path: '' }]);
});

test('main: the VMM\'s own checks name the field (interface names, HOST:PORT, duplicate MACs, too many SATA devices)', () => {
  const problems = specDeviceProblems(spec({
    nics: [
      { model: 'virtio', backend: { kind: 'tap', ifname: 'tap/0' } },
      { model: 'virtio', backend: { kind: 'udp', local: '127.0.0.1', remote: '127.0.0.1:99999' } },
    ],
  }));
  assert.deepEqual(problems.map((p) => p.field), ['nics.0', 'nics.1']);
  assert.match(problems[0].message, /^NIC 1: "tap\/0" is not an interface name/);
  assert.match(problems[1].message, /^NIC 2: "127\.0\.0\.1" is not HOST:PORT/);
  assert.doesNotMatch(problems[0].message, /nics\[/, 'no config-file paths in the sentence');
  const macs = specDeviceProblems(spec({ nics: [{ model: 'virtio', mac: '52:54:00:00:00:01', backend: { kind: 'none' } }, { model: 'virtio', mac: '52:54:00:00:00:01', backend: { kind: 'none' } }] }));
  assert.equal(macs.length, 1);
  assert.match(macs[0].message, /MAC 52:54:00:00:00:01 is taken by NIC 0/);
  const sata = specDeviceProblems(spec({ disks: new Array(6).fill({ path: '/a.img', bus: 'sata' }), cdrom: { path: '' } }));
  assert.match(sata[0]?.message ?? '', /at most 6 SATA disks and CD-ROM drives/);
});

test('main: missing disk and ISO files are problems naming the file; an ISO to insert is checked before it goes to the VM', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-spec-'));
  try {
    const iso = path.join(dir, 'a.iso');
    fs.writeFileSync(iso, Buffer.alloc(4096));
    const odd = path.join(dir, 'odd.iso');
    fs.writeFileSync(odd, Buffer.alloc(1000));
    const missing = path.join(dir, 'nope.img');
    assert.deepEqual(specFileProblems(spec({ disks: [{ path: missing }], cdrom: { path: path.join(dir, 'nope.iso') } })).map((p) => p.message), [
      `Disk 1 image: ${missing} does not exist.`,
      `CD-ROM ISO image: ${path.join(dir, 'nope.iso')} does not exist.`,
    ]);
    assert.deepEqual(specFileProblems(spec({ cdrom: { path: '' } })), [], 'an empty drive names no file');
    assert.equal(isoFileProblem(iso), null);
    assert.deepEqual(isoFileProblem(path.join(dir, 'x.iso')), { code: 'not-found', message: `The ISO image ${path.join(dir, 'x.iso')} does not exist.` });
    assert.equal(isoFileProblem(dir)?.message, `The ISO image ${dir} is not a file.`);
    assert.match(isoFileProblem(odd)?.message ?? '', /is not a CD image: its size \(1000 bytes\)/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the machine config: boot.disks, then disks, then the CD-ROM drive; boot from CD; NICs; a legacy boot.cdrom boots its ISO', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-spec-'));
  try {
    const file = (name: string) => { const p = path.join(dir, name); fs.writeFileSync(p, Buffer.alloc(4096)); return p; };
    const a = file('a.img'); const b = file('b.qcow2'); const iso = file('c.iso');
    const c = machineConfigOf(spec({
      boot: { kind: 'firmware', firmware: '', disks: [a], cdrom: '', optionRoms: [] },
      disks: [{ path: b, bus: 'sata', format: 'qcow2', readOnly: true }],
      cdrom: { path: iso, boot: true },
      nics: [{ model: 'virtio', mac: '52:54:00:AA:BB:CC', backend: { kind: 'udp', local: '127.0.0.1:5000', remote: '127.0.0.1:5001' } }],
    }));
    assert.deepEqual(c.disks, [
      { path: a, readOnly: false },
      { path: b, readOnly: true, bus: 'sata', format: 'qcow2' },
      { readOnly: true, bus: 'sata', media: 'cdrom', path: iso },
    ]);
    assert.deepEqual(c.boot, { kind: 'firmware', path: undefined, bootFrom: 'cdrom' });
    assert.deepEqual(c.nics, [{ model: 'virtio', mac: '52:54:00:aa:bb:cc', backend: { kind: 'udp', local: '127.0.0.1:5000', remote: '127.0.0.1:5001' } }]);
    const empty = machineConfigOf(spec({ cdrom: { path: '' } }));
    assert.deepEqual(empty.disks, [{ readOnly: true, bus: 'sata', media: 'cdrom' }]);
    assert.equal((empty.boot as { bootFrom?: string }).bootFrom, undefined, 'the hard disk first unless asked');
    const legacy = machineConfigOf(spec({ boot: { kind: 'firmware', firmware: '', disks: [], cdrom: iso, optionRoms: [] } }));
    assert.deepEqual([legacy.disks, (legacy.boot as { bootFrom?: string }).bootFrom], [[{ readOnly: true, bus: 'sata', media: 'cdrom', path: iso }], 'cdrom']);
    assert.throws(() => machineConfigOf(spec({ nics: [{ model: 'virtio', backend: { kind: 'bridge', bridge: 'br 0' } }] })), /NIC 1: "br 0" is not an interface name/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('user-mode NAT port forwards: optional text in the spec, the VMM\'s hostfwd list in the machine config, a bad rule a sentence naming the NIC', () => {
  const user = (hostfwd?: string): VmSpec => spec({ nics: [{ model: 'virtio', backend: hostfwd === undefined ? { kind: 'user' } : { kind: 'user', hostfwd } }] });
  assert.deepEqual(messages(user()), []);
  assert.deepEqual(messages(user('')), []);
  assert.deepEqual(messages(user('tcp:127.0.0.1:8022-:22 udp::5353-:53')), []);
  assert.deepEqual(messages(user('tcp::22-:22\u0007')), ['nics.0.backend.hostfwd: NIC 1 port forwards (optional, space-separated) must be short text without control characters.']);
  assert.deepEqual(parseVmSpec(user('')).nics, [{ model: 'virtio', backend: { kind: 'user' } }], 'an empty optional field is not saved');
  assert.deepEqual(machineConfigOf(user('tcp:127.0.0.1:8022-:22, udp::5353-:53')).nics, [
    { model: 'virtio', backend: { kind: 'user', hostfwd: ['tcp:127.0.0.1:8022-:22', 'udp::5353-:53'] } },
  ]);
  assert.deepEqual(machineConfigOf(user()).nics?.[0].backend, { kind: 'user', hostfwd: [] });
  const bad = specDeviceProblems(user('tcp::8022-:22 tcp::8022-:23'));
  assert.deepEqual(bad.map((p) => p.field), ['nics.0']);
  assert.match(bad[0].message, /^NIC 1: .*host tcp port 8022 is forwarded by hostfwd\[0\] already/);
  assert.match(specDeviceProblems(user('icmp::1-:1'))[0]?.message ?? '', /^NIC 1: .*only tcp and udp are forwarded/);
});

test('the CD-ROM calls\' arguments: an absolute ISO path, a drive name, force as a boolean; unknown fields refused', () => {
  assert.deepEqual(parseCdromInsertSpec({ path: '/a.iso', drive: 'disk1', force: true }), { path: '/a.iso', drive: 'disk1', force: true });
  assert.throws(() => parseCdromInsertSpec({ path: 'a.iso' }), /The ISO image path must be absolute \(starting with \/\), not "a\.iso"\./);
  assert.throws(() => parseCdromInsertSpec({}), /The ISO image needs a file path\./);
  assert.throws(() => parseCdromInsertSpec({ path: '/a.iso', tray: 'open' }), /"tray" is not a setting of a CD-ROM insert/);
  assert.throws(() => parseCdromInsertSpec('/a.iso'), /must be an object/);
  assert.deepEqual(parseCdromEjectSpec(undefined), {});
  assert.deepEqual(parseCdromEjectSpec({ force: true }), { force: true });
  assert.throws(() => parseCdromEjectSpec({ force: 'yes' }), /"force" must be true or false\./);
  assert.throws(() => parseCdromEjectSpec({ drive: '' }), /The drive must be a CD-ROM drive's name/);
});

test('porthole cdrom VM list|insert|eject and --boot-from', () => {
  assert.deepEqual(parseArgs(['cdrom', '/tmp/vm.sock', 'insert', 'debian.iso'], noFiles), {
    command: 'monitor', socket: '/tmp/vm.sock', method: 'insertCdrom', args: [{ path: path.resolve('debian.iso') }],
  });
  assert.deepEqual(parseArgs(['cdrom', '/tmp/vm.sock', 'eject', '--force', '--drive', 'disk2'], noFiles), {
    command: 'monitor', socket: '/tmp/vm.sock', method: 'ejectCdrom', args: [{ drive: 'disk2', force: true }],
  });
  assert.deepEqual(parseArgs(['cdrom', 'list', '--monitor', '/tmp/vm.sock'], noFiles), { command: 'monitor', socket: '/tmp/vm.sock', method: 'listCdromDrives', args: [] });
  assert.throws(() => parseArgs(['cdrom', '/tmp/vm.sock', 'insert'], noFiles), /takes one ISO image/);
  assert.throws(() => parseArgs(['cdrom', '/tmp/vm.sock', 'open'], noFiles), /use list, insert ISO or eject/);
  const run = parseArgs(['run', '--firmware', '/bios.bin', '--cdrom', '/a.iso', '--boot-from', 'cdrom'], noFiles);
  assert.equal(run.command === 'run' && run.config.boot.kind === 'firmware' ? run.config.boot.bootFrom : null, 'cdrom');
  assert.throws(() => parseArgs(['run', '--kernel', '/k', '--boot-from', 'cdrom'], noFiles), /--boot-from is for firmware boots/);
  assert.throws(() => parseArgs(['run', '--boot-from', 'floppy'], noFiles), /--boot-from takes disk or cdrom/);
});

test('the app\'s NIC models are the VMM\'s (a model added to one is added to the other); every backend kind has a label', () => {
  assert.deepEqual(NIC_MODEL_CHOICES.map((m) => m.model).sort(), [...NIC_MODELS].sort());
  for (const b of NIC_BACKEND_CHOICES) assert.ok(b.label.length > 0 && b.fields.every((f) => f.label.length > 0), b.kind);
});

test('the monitor socket: CD-ROM calls reach the VM host\'s media methods; its refusals come back as sentences with their codes', async () => {
  const { handleMonitorLine } = await import('../../main/cli/monitor');
  const { CdromRequestError } = await import('../../main/vmm/shared/cdrom-messages');
  const { formatCdromDrives } = await import('../../main/cli/main');
  const calls: unknown[] = [];
  const drives = [{ drive: 'disk1', port: 1, path: '/a.iso', locked: true, trayOpen: false }];
  const control = {
    usbPorts: async () => [], attachUsb: async () => { throw new Error('no'); }, detachUsb: async () => {}, sendUsbKeys: async () => {},
    attachHostUsb: async () => { throw new Error('no'); },
    cdromDrives: async () => drives,
    insertCdrom: async (...args: unknown[]) => { calls.push(['insert', ...args]); return drives; },
    ejectCdrom: async (...args: unknown[]) => {
      calls.push(['eject', ...args]);
      if (args[1] !== true) throw new CdromRequestError('invalid-state', 'the guest has locked disk1 (PREVENT ALLOW MEDIUM REMOVAL); it was asked to eject the disc. Eject it in the guest, or force it');
      return drives;
    },
  };
  assert.deepEqual(await handleMonitorLine(control, '{"id": 1, "method": "listCdromDrives"}'), { id: 1, ok: true, value: drives });
  assert.deepEqual(await handleMonitorLine(control, '{"id": 2, "method": "insertCdrom", "args": [{"path": "/b.iso", "drive": "disk1"}]}'), { id: 2, ok: true, value: drives });
  assert.deepEqual(await handleMonitorLine(control, '{"id": 3, "method": "ejectCdrom", "args": [{}]}'), {
    id: 3, ok: false, error: { code: 'invalid-state', message: 'The guest has locked disk1 (PREVENT ALLOW MEDIUM REMOVAL); it was asked to eject the disc. Eject it in the guest, or force it.' },
  });
  assert.deepEqual(await handleMonitorLine(control, '{"id": 4, "method": "ejectCdrom", "args": [{"force": true}]}'), { id: 4, ok: true, value: drives });
  assert.deepEqual(await handleMonitorLine(control, '{"id": 5, "method": "insertCdrom", "args": [{"path": "b.iso"}]}'), {
    id: 5, ok: false, error: { code: 'invalid-argument', message: 'The ISO image path must be absolute (starting with /), not "b.iso".' },
  });
  assert.deepEqual(calls, [['insert', '/b.iso', 'disk1', false], ['eject', undefined, false], ['eject', undefined, true]]);
  assert.equal(formatCdromDrives(drives), 'disk1  sata port 1  /a.iso  locked by the guest\n');
  assert.equal(formatCdromDrives([{ ...drives[0], path: null, locked: false, trayOpen: true }]), 'disk1  sata port 1  (no disc, tray open)\n');
});
