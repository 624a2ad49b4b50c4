// PCI assignment (issue 11 item 6): the API's validation of assignPciDevice / returnPciDevice and
// of VmSpec.pciAssign, the reasons a device cannot be assigned on fake sysfs trees, the manager
// saving a VM's pciAssign atomically (the library file is read back) and the VMM config it makes,
// the CLI's pci assign / return on a config file, and the PCI tab's pure helpers.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import { ApiError, type PciDeviceSummary, type VmSummary } from '../../main/api/contract';
import { ApiSession } from '../../main/api/session';
import { parsePciAddress, parsePciAssignRequest } from '../../main/api/pci-input';
import { parseVmSpec, vmSpecProblems } from '../../main/api/schema';
import { machineConfigOf } from '../../main/manager/machine-config';
import { VmManager } from '../../main/manager/manager';
import { listPciDevices, readPciDevice } from '../../main/host/pci-inventory';
import { pciAssignRefusal } from '../../main/host/pci-assignment';
import { parseArgs, UsageError } from '../../main/cli/args';
import { runPciAssignAction } from '../../main/cli/pci-assign-file';
import { ConfigError, machineConfigFromJson } from '../../main/vmm/config';
import { FakePciSysfs, samplePciHost } from '../helpers/fake-pci-sysfs';
import { flatSpec, tempConfigHome } from '../helpers/manager';
import { ScriptedProcess } from '../helpers/scripted-process';
import { loadRendererModule } from '../helpers/renderer-module';

type PciModule = typeof import('../../renderer/src/pci');

function apiError(code: string, pattern: RegExp) {
  return (e: unknown) => e instanceof ApiError && e.code === code && pattern.test(e.message);
}

test('assignPciDevice and returnPciDevice arguments: addresses are normalized, anything else is a sentence', () => {
  assert.deepEqual(parsePciAssignRequest({ address: '01:00.0' }), { address: '0000:01:00.0' });
  assert.deepEqual(parsePciAssignRequest({ address: ' 0000:0A:1F.7 ', force: true }), { address: '0000:0a:1f.7', force: true });
  assert.deepEqual(parsePciAssignRequest({ address: '0000:01:00.0', force: false }), { address: '0000:01:00.0' });
  assert.equal(parsePciAddress('0000:00:02.0'), '0000:00:02.0');
  const bad: [unknown, RegExp][] = [
    [null, /must be \{ address, force \}/],
    ['0000:01:00.0', /must be \{ address, force \}/],
    [{}, /must be a PCI address like 0000:01:00\.0 .*not nothing/],
    [{ address: 'eth0' }, /not "eth0"\./],
    [{ address: '0000:01:20.0' }, /not "0000:01:20\.0"/], // device numbers end at 1f
    [{ address: '0000:01:00.8' }, /not "0000:01:00\.8"/],
    [{ address: 5 }, /not a number/],
    [{ address: '0000:01:00.0', force: 'yes' }, /force must be true or false/],
    [{ address: '0000:01:00.0', vm: 'x' }, /"vm" is not a PCI assignment setting/],
  ];
  for (const [input, pattern] of bad) assert.throws(() => parsePciAssignRequest(input), apiError('invalid-argument', pattern), JSON.stringify(input));
  assert.throws(() => parsePciAddress('x'.repeat(5000)), apiError('invalid-argument', /not "x{40}…"/));
});

test('VmSpec.pciAssign: shape problems name the entry; a good list parses to a copy', () => {
  const good = flatSpec('echo', { pciAssign: [{ address: '0000:00:02.0' }, { address: '0000:00:01.0', force: true }] });
  assert.deepEqual(vmSpecProblems(good), []);
  assert.deepEqual(parseVmSpec(good).pciAssign, good.pciAssign);
  const problems = (v: unknown) => vmSpecProblems({ ...flatSpec('echo'), pciAssign: v }).map((p) => `${p.field}: ${p.message}`);
  assert.deepEqual(problems('0000:00:02.0'), ['pciAssign: PCI devices must be a list of { address, force }.']);
  assert.deepEqual(problems([{ address: '01:00.0' }]), ['pciAssign.0: PCI device 1 must name a PCI address like 0000:01:00.0, not "01:00.0".']);
  assert.deepEqual(problems([{ address: '0000:00:02.0' }, { address: '0000:00:02.0', force: 1 }]), [
    'pciAssign.1: PCI device 2 force must be true or false.',
    'pciAssign.1: PCI device 2 is 0000:00:02.0 again (PCI device 1 is too).',
  ]);
  assert.deepEqual(problems([{ address: '0000:00:02.0', extra: 1 }]), ['pciAssign.0: PCI device 1 has "extra", which is not a setting (only address and force).']);
  const five = ['0000:00:01.0', '0000:00:02.0', '0000:00:03.0', '0000:00:04.0', '0000:00:05.0'].map((address) => ({ address }));
  assert.deepEqual(problems(five), ['pciAssign: PCI devices may have at most 4 entries.']);
});

test('the reasons a device cannot be assigned, on a fake sysfs tree', () => {
  const s = samplePciHost();
  try {
    const by = new Map(listPciDevices(s.roots).map((d) => [d.address, d]));
    const refusal = (a: string, force = false, current: { address: string }[] = []) => pciAssignRefusal(a, by.get(a) ?? null, current, force);
    // A free NIC, and an NVMe behind a bridge (the bridge does not spoil its group).
    assert.equal(refusal('0000:00:02.0'), null);
    assert.equal(refusal('0000:01:00.0'), null);
    assert.equal(by.get('0000:01:00.0')?.whyNotKind, null);
    // The host needs it: said what for, and only force takes it.
    assert.equal(by.get('0000:00:01.0')?.whyNotKind, 'host-needs');
    assert.deepEqual(refusal('0000:00:01.0'), {
      code: 'invalid-state',
      message: '0000:00:01.0 is needed by the host: it is the boot display (boot_vga). Assign it with force only if the host can do without it while the VM runs.',
    });
    assert.equal(refusal('0000:00:01.0', true), null);
    assert.match(refusal('0000:00:03.0')?.message ?? '', /needed by the host: it is enp0s3, which carries the default route\./);
    // A group that is not viable: force does not help.
    assert.equal(by.get('0000:00:04.0')?.whyNotKind, 'group-not-viable');
    assert.deepEqual(refusal('0000:00:04.0', true), {
      code: 'invalid-state',
      message: '0000:00:04.0 cannot be assigned: its IOMMU group 4 is not viable: it also holds 0000:00:04.1 (snd_hda_intel), which would have to leave the host too.',
    });
    assert.equal(by.get('0000:00:1c.0')?.whyNotKind, 'bridge');
    assert.match(refusal('0000:00:1c.0', true)?.message ?? '', /^0000:00:1c\.0 cannot be assigned: it is a bridge/);
    assert.deepEqual(refusal('0000:09:00.0'), { code: 'not-found', message: 'The host has no PCI device at 0000:09:00.0 (it may have been removed).' });
    // The VM's own list: twice, or a fifth.
    assert.match(refusal('0000:00:02.0', false, [{ address: '0000:00:02.0' }])?.message ?? '', /already has 0000:00:02\.0 assigned/);
    const four = ['0000:00:05.0', '0000:00:06.0', '0000:00:07.0', '0000:00:08.0'].map((address) => ({ address }));
    assert.match(refusal('0000:00:02.0', false, four)?.message ?? '', /already has 4 PCI devices assigned, the most a VM can have/);
  } finally {
    s.cleanup();
  }
  // The IOMMU off: no groups at all.
  const off = new FakePciSysfs([{ address: '0000:00:02.0', vendor: 0x8086, device: 0x100e, cls: 0x020000, driver: 'e1000' }]);
  try {
    const d = readPciDevice('0000:00:02.0', off.roots);
    assert.equal(d?.whyNotKind, 'no-iommu');
    assert.match(pciAssignRefusal('0000:00:02.0', d, [], true)?.message ?? '', /cannot be assigned: it is in no IOMMU group: the IOMMU is off \(boot with intel_iommu=on or amd_iommu=on\)/);
  } finally {
    off.cleanup();
  }
});

let home: ReturnType<typeof tempConfigHome>;
let host: FakePciSysfs;
let manager: VmManager;
let session: ApiSession<Uint8Array>;

beforeEach(() => {
  home = tempConfigHome();
  host = samplePciHost();
  manager = new VmManager({
    libraryDir: home.libraryDir, mode: 'browser', appVersion: 't', stopTimeoutMs: 200, startTimeoutMs: 1000,
    launcher: () => new ScriptedProcess(), log: () => undefined, hostRoots: host.roots,
  });
  manager.load();
  session = new ApiSession(manager, () => undefined, (d) => d, () => undefined);
});

afterEach(() => {
  host.cleanup();
  home.cleanup();
});

test('through the session: assign saves pciAssign atomically, the list says who has it, return removes it', async () => {
  fs.writeFileSync(path.join(home.home, 'g.bin'), 'x');
  const vm = manager.createVm(flatSpec('echo', { boot: { kind: 'flat', path: path.join(home.home, 'g.bin') } }));
  const other = manager.createVm({ ...flatSpec('echo', { boot: { kind: 'flat', path: path.join(home.home, 'g.bin') } }), name: 'other' });
  const file = path.join(home.libraryDir, `${vm.id}.json`);
  const saved = () => (JSON.parse(fs.readFileSync(file, 'utf8')) as { spec: VmSummary['spec'] }).spec.pciAssign;

  assert.deepEqual(await session.call('assignPciDevice', [vm.id, { address: '00:02.0' }]), { ok: true, value: [{ address: '0000:00:02.0' }] });
  assert.deepEqual(saved(), [{ address: '0000:00:02.0' }]);
  // force is kept only where the host needs the device.
  assert.deepEqual(await session.call('assignPciDevice', [vm.id, { address: '0000:01:00.0', force: true }]), { ok: true, value: [{ address: '0000:00:02.0' }, { address: '0000:01:00.0' }] });
  const refused = await session.call('assignPciDevice', [vm.id, { address: '0000:00:01.0' }]);
  assert.deepEqual(refused, { ok: false, error: { code: 'invalid-state', message: '0000:00:01.0 is needed by the host: it is the boot display (boot_vga). Assign it with force only if the host can do without it while the VM runs.' } });
  assert.equal((await session.call('assignPciDevice', [vm.id, { address: '0000:00:01.0', force: true }])).ok, true);
  assert.deepEqual(saved(), [{ address: '0000:00:02.0' }, { address: '0000:01:00.0' }, { address: '0000:00:01.0', force: true }]);
  assert.deepEqual(await session.call('assignPciDevice', [other.id, { address: '0000:00:02.0' }]), { ok: true, value: [{ address: '0000:00:02.0' }] });

  const list = await manager.listPciDevices();
  const nic = list.find((d) => d.address === '0000:00:02.0')!;
  assert.deepEqual(nic.assignedTo, [{ vm: vm.id, vmName: vm.spec.name, force: false }, { vm: other.id, vmName: 'other', force: false }]);
  assert.deepEqual(list.find((d) => d.address === '0000:00:04.0')!.assignedTo, []);
  assert.equal(list.find((d) => d.address === '0000:00:04.0')!.whyNotKind, 'group-not-viable');

  // The VMM config the next start gets.
  assert.deepEqual(machineConfigOf(manager.getVm(vm.id).spec).pciAssign, [{ address: '0000:00:02.0' }, { address: '0000:01:00.0' }, { address: '0000:00:01.0', force: true }]);

  // Bad arguments are sentences before the manager sees them; the manager's own refusals too.
  const errorOf = async (m: string, args: unknown[]) => { const r = await session.call(m, args); return r.ok ? null : r.error; };
  assert.deepEqual(await errorOf('assignPciDevice', [vm.id, { address: 'eth0' }]), {
    code: 'invalid-argument', message: 'The PCI device must be a PCI address like 0000:01:00.0 (or 01:00.0), as listPciDevices shows it, not "eth0" (argument "request" of assignPciDevice).',
  });
  assert.equal((await errorOf('assignPciDevice', ['NOT AN ID', { address: '0000:00:02.0' }]))?.code, 'invalid-argument');
  assert.equal((await errorOf('assignPciDevice', ['no-such-vm', { address: '0000:00:02.0' }]))?.code, 'not-found');
  assert.deepEqual(await errorOf('assignPciDevice', [vm.id, { address: '0000:00:02.0' }]), { code: 'invalid-state', message: 'This VM already has 0000:00:02.0 assigned.' });
  assert.deepEqual(await errorOf('assignPciDevice', [vm.id, { address: '0000:00:09.0' }]), { code: 'not-found', message: 'The host has no PCI device at 0000:00:09.0 (it may have been removed).' });
  assert.equal((await session.call('assignPciDevice', [vm.id, { address: '0000:00:03.0', force: true }])).ok, true);
  assert.match((await errorOf('assignPciDevice', [other.id, { address: '0000:00:04.0' }]))?.message ?? '', /cannot be assigned: its IOMMU group 4 is not viable/);
  assert.equal((await errorOf('assignPciDevice', [vm.id, { address: '0000:00:04.1' }]))?.message, 'This VM already has 4 PCI devices assigned, the most a VM can have: return one first.');

  // Return: one at a time, then the field goes away.
  assert.deepEqual(await errorOf('returnPciDevice', [vm.id, 'x']), {
    code: 'invalid-argument', message: 'The PCI device must be a PCI address like 0000:01:00.0 (or 01:00.0), as listPciDevices shows it, not "x" (argument "address" of returnPciDevice).',
  });
  assert.deepEqual(await errorOf('returnPciDevice', [vm.id, '0000:00:04.0']), { code: 'not-found', message: 'This VM has no PCI device 0000:00:04.0 assigned.' });
  for (const a of ['0000:00:01.0', '0000:01:00.0', '0000:00:03.0']) assert.equal((await session.call('returnPciDevice', [vm.id, a])).ok, true);
  assert.deepEqual(await session.call('returnPciDevice', [vm.id, '00:02.0']), { ok: true, value: [] });
  assert.equal(saved(), undefined);
  assert.equal('pciAssign' in manager.getVm(vm.id).spec, false);
  assert.deepEqual(await errorOf('returnPciDevice', [vm.id, '0000:00:02.0']), { code: 'not-found', message: 'This VM has no PCI devices assigned.' });
  // No temporary files left beside the library files.
  assert.deepEqual(fs.readdirSync(home.libraryDir).filter((n) => !n.endsWith('.json')), []);
});

test('porthole pci assign / return edit a config file\'s pciAssign with the same checks', () => {
  assert.deepEqual(parseArgs(['pci', 'assign', 'vm.json', '01:00.0', '--force'], () => ({})), {
    command: 'pci-assign', file: 'vm.json', action: { op: 'assign', address: '0000:01:00.0', force: true },
  });
  assert.deepEqual(parseArgs(['pci', 'return', 'vm.json', '0000:01:00.0'], () => ({})), { command: 'pci-assign', file: 'vm.json', action: { op: 'return', address: '0000:01:00.0' } });
  assert.throws(() => parseArgs(['pci', 'assign', 'vm.json'], () => ({})), (e: Error) => e instanceof UsageError && /takes a VM config file and a PCI address/.test(e.message));
  assert.throws(() => parseArgs(['pci', 'assign', 'vm.json', 'eth0'], () => ({})), (e: Error) => e instanceof UsageError && /"eth0" is not a PCI address/.test(e.message));
  assert.throws(() => parseArgs(['pci', 'return', 'vm.json', '01:00.0', '--force'], () => ({})), (e: Error) => e instanceof UsageError && /takes no --force/.test(e.message));

  const file = path.join(home.home, 'vm.json');
  const original = { version: 1, name: 'cli', memory: '64M', boot: { kind: 'firmware' }, serial: ['stdio'] };
  fs.writeFileSync(file, JSON.stringify(original));
  assert.equal(runPciAssignAction(file, { op: 'assign', address: '0000:00:02.0', force: false }, host.roots), '0000:00:02.0 (Ethernet controller) assigned; the VM takes it when it starts\n');
  assert.throws(() => runPciAssignAction(file, { op: 'assign', address: '0000:00:01.0', force: false }, host.roots),
    (e: Error) => e instanceof ConfigError && /is needed by the host: it is the boot display \(boot_vga\)\. Assign it with force only if .* \(--force\)$/.test(e.message));
  runPciAssignAction(file, { op: 'assign', address: '0000:00:01.0', force: true }, host.roots);
  const written = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  assert.deepEqual(written, { ...original, pciAssign: ['0000:00:02.0', { address: '0000:00:01.0', force: true }] });
  assert.deepEqual(machineConfigFromJson(written, file).pciAssign, [{ address: '0000:00:02.0' }, { address: '0000:00:01.0', force: true }]);
  assert.throws(() => runPciAssignAction(file, { op: 'return', address: '0000:00:04.0' }, host.roots),
    (e: Error) => e instanceof ConfigError && /has no PCI device 0000:00:04\.0 assigned \(it has 0000:00:02\.0, 0000:00:01\.0\)/.test(e.message));
  runPciAssignAction(file, { op: 'return', address: '0000:00:02.0' }, host.roots);
  runPciAssignAction(file, { op: 'return', address: '0000:00:01.0' }, host.roots);
  assert.deepEqual(JSON.parse(fs.readFileSync(file, 'utf8')), original);
});

test('the PCI tab: groups by IOMMU group, each device\'s state and button for one VM', async () => {
  const pci = loadRendererModule<PciModule>('pci.ts');
  const vm = manager.createVm(flatSpec('echo', { pciAssign: [{ address: '0000:00:02.0' }] }));
  await manager.assignPciDevice(manager.createVm({ ...flatSpec('echo'), name: 'db' }).id, { address: '0000:00:02.0' });
  const list: PciDeviceSummary[] = await manager.listPciDevices();
  const groups = pci.groupPciDevices(list);
  assert.deepEqual(groups.map((g) => [pci.pciGroupTitle(g), g.devices.map((d) => d.address)]), [
    ['IOMMU group 1: viable once its device leaves its host driver', ['0000:00:01.0']],
    ['IOMMU group 2: viable once its device leaves its host driver', ['0000:00:02.0']],
    ['IOMMU group 3: viable once its device leaves its host driver', ['0000:00:03.0']],
    ['IOMMU group 4: not viable (more than one member on a host driver)', ['0000:00:04.0', '0000:00:04.1']],
    ['IOMMU group 5: viable once its device leaves its host driver', ['0000:00:1c.0', '0000:01:00.0']],
  ]);
  const row = (a: string) => {
    const d = list.find((x) => x.address === a)!;
    const st = pci.pciDeviceState(d, manager.getVm(vm.id));
    return [pci.pciStateText(st), pci.pciDeviceAction(st), pci.pciOthersText(d, vm.id)];
  };
  assert.deepEqual(row('0000:00:02.0'), ['Assigned to this VM: it takes it at start', 'return', 'Also assigned to VM db (one VM at a time can run with it).']);
  assert.deepEqual(row('0000:01:00.0'), ['Can be assigned', 'assign', null]);
  assert.deepEqual(row('0000:00:01.0'), ['The host needs it: It is the boot display (boot_vga).', 'force', null]);
  assert.deepEqual(row('0000:00:04.0'), [
    'Cannot be assigned: Its IOMMU group 4 is not viable: it also holds 0000:00:04.1 (snd_hda_intel), which would have to leave the host too.', null, null,
  ]);
  assert.equal(row('0000:00:1c.0')[1], null);
  const noGroup = pci.groupPciDevices([{ ...list[0], iommuGroup: null }]);
  assert.equal(pci.pciGroupTitle(noGroup[0]), 'No IOMMU group (the IOMMU is off)');
  assert.match(pci.PCI_HOTPLUG_NOTE, /PCI hot-plug is not supported/);
});
