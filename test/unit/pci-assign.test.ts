// PCI assignment on the VM host (main/vmm/host/pci-assign.ts) with fakes for the binding and
// VFIO: guest RAM's DMA map list, maps undone on failure and at the end, every function given
// back whatever failed; and the --pci-assign / pciAssign config surface.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseArgs } from '../../main/cli/args';
import { ConfigError, machineConfigFromJson } from '../../main/vmm/config';
import { AssignedPci, type DmaContainer, DmaMaps, dmaMapList, type PciAssignDeps, reclaimFromDeadHolders } from '../../main/vmm/host/pci-assign';
import type { DmaMapping } from '../../native/vfio';

const MiB = 1024 * 1024;
const RAM = [
  { guestBase: 0x100000000, size: 512 * MiB, hostAddr: 0x7f0040000000n, name: 'ram-high' },
  { guestBase: 0, size: 3 * 1024 * MiB, hostAddr: 0x7f0000000000n, name: 'ram-low' },
];

test('dmaMapList: every RAM region at IOVA = guest address, read/write, sorted; unaligned or overlapping RAM is refused', () => {
  assert.deepEqual(dmaMapList(RAM), [
    { iova: 0n, vaddr: 0x7f0000000000n, size: 3 * 1024 * MiB, read: true, write: true },
    { iova: 0x100000000n, vaddr: 0x7f0040000000n, size: 512 * MiB, read: true, write: true },
  ]);
  assert.throws(() => dmaMapList([{ guestBase: 0x800, size: 4096, hostAddr: 0x1000n, name: 'odd' }]), /odd .*not page-aligned/);
  assert.throws(() => dmaMapList([{ guestBase: 0, size: 4096, hostAddr: 0x1008n, name: 'odd' }]), /not page-aligned/);
  assert.throws(() => dmaMapList([{ guestBase: 0, size: 0x2000, hostAddr: 0n, name: 'a' }, { guestBase: 0x1000, size: 0x1000, hostAddr: 0n, name: 'b' }]), /b overlaps a/);
});

class FakeContainer implements DmaContainer {
  readonly mapped = new Map<bigint, number>();
  failAt: bigint | null = null;
  readonly calls: string[] = [];
  mapDma(m: DmaMapping): void {
    this.calls.push(`map ${m.iova.toString(16)}`);
    if (m.iova === this.failAt) throw new Error('VFIO_IOMMU_MAP_DMA: ENOMEM');
    this.mapped.set(m.iova, m.size);
  }
  unmapDma(iova: bigint, size: number): number {
    this.calls.push(`unmap ${iova.toString(16)}`);
    const n = this.mapped.get(iova);
    this.mapped.delete(iova);
    return n === size ? size : 0;
  }
}

test('DmaMaps: a failing map undoes the ones before it; unmapAll undoes all, last first, and reports short unmaps', () => {
  const c = new FakeContainer();
  c.failAt = 0x100000000n;
  assert.throws(() => new DmaMaps(c).mapAll(dmaMapList(RAM)), /ENOMEM/);
  assert.deepEqual(c.calls, ['map 0', 'map 100000000', 'unmap 0']);
  assert.equal(c.mapped.size, 0);
  const ok = new FakeContainer();
  const maps = new DmaMaps(ok);
  maps.mapAll(dmaMapList(RAM));
  assert.equal(maps.mappings.length, 2);
  ok.mapped.delete(0n); // something else unmapped it
  assert.deepEqual(maps.unmapAll(), [`DMA unmap of IOVA 0x0 took 0 of ${3 * 1024 * MiB} bytes`]);
  assert.deepEqual(ok.calls.slice(-2), ['unmap 100000000', 'unmap 0']);
});

function fakeDeps(opts: { failOpen?: string; failTake?: string; failGiveBack?: string } = {}) {
  const log: string[] = [];
  const containers = new Map<string, FakeContainer>();
  let fd = 40;
  const deps: PciAssignDeps = {
    take: (address, o) => {
      if (address === opts.failTake) throw new Error(`${address} stays with the host: it holds the root filesystem`);
      log.push(`take ${address} for ${o.vm}${o.force ? ' (forced)' : ''}`);
      return { address, iommuGroup: 7, driver: 'e1000', driverOverride: null, moved: true };
    },
    giveBack: (taken) => {
      log.push(`give back ${taken.address}`);
      if (taken.address === opts.failGiveBack) throw new Error('e1000 would not bind');
      return taken.driver;
    },
    open: (group, address) => {
      if (address === opts.failOpen) throw new Error(`/dev/vfio/${group} is not viable`);
      const c = new FakeContainer();
      containers.set(address, c);
      log.push(`open ${address} in group ${group}`);
      return { deviceFd: fd++, container: c, close: () => { log.push(`close ${address}`); } };
    },
  };
  return { deps, log, containers };
}

test('AssignedPci: takes, opens and maps RAM for each function; gives the fds to the machine; close unmaps, closes and gives back', () => {
  const { deps, log, containers } = fakeDeps();
  const a = AssignedPci.open([{ address: '0000:00:03.0' }, { address: '0000:01:00.0', force: true }], RAM, { vm: 'vm1', journal: null, deps });
  assert.deepEqual(log, ['take 0000:00:03.0 for vm1', 'open 0000:00:03.0 in group 7', 'take 0000:01:00.0 for vm1 (forced)', 'open 0000:01:00.0 in group 7']);
  assert.equal(containers.get('0000:00:03.0')!.mapped.size, 2);
  assert.deepEqual(a.withFds([{ address: '0000:00:03.0' }, { address: '0000:01:00.0', force: true }]), [{ address: '0000:00:03.0', fd: 40 }, { address: '0000:01:00.0', force: true, fd: 41 }]);
  const lines = a.close();
  assert.deepEqual(log.slice(4), ['close 0000:01:00.0', 'give back 0000:01:00.0', 'close 0000:00:03.0', 'give back 0000:00:03.0']);
  assert.equal(containers.get('0000:00:03.0')!.mapped.size, 0);
  assert.deepEqual(lines, ['0000:01:00.0 given back to the host (e1000)', '0000:00:03.0 given back to the host (e1000)']);
  assert.deepEqual(a.close(), [], 'a second close does nothing');
});

test('AssignedPci: a function that cannot be opened or taken fails the start with its address, and what was taken goes back', () => {
  const open = fakeDeps({ failOpen: '0000:01:00.0' });
  assert.throws(() => AssignedPci.open([{ address: '0000:00:03.0' }, { address: '0000:01:00.0' }], RAM, { vm: 'vm1', journal: null, deps: open.deps }),
    /^Error: PCI function 0000:01:00\.0: \/dev\/vfio\/7 is not viable$/);
  assert.deepEqual(open.log.filter((l) => l.startsWith('give back')), ['give back 0000:01:00.0', 'give back 0000:00:03.0']);
  const take = fakeDeps({ failTake: '0000:01:00.0' });
  assert.throws(() => AssignedPci.open([{ address: '0000:00:03.0' }, { address: '0000:01:00.0' }], RAM, { vm: 'vm1', journal: null, deps: take.deps }), /root filesystem/);
  assert.deepEqual(take.log.filter((l) => l.startsWith('give back') || l.startsWith('close')), ['close 0000:00:03.0', 'give back 0000:00:03.0']);
  const map = fakeDeps();
  const bad = [{ guestBase: 0x800, size: 4096, hostAddr: 0n, name: 'odd' }];
  assert.throws(() => AssignedPci.open([{ address: '0000:00:03.0' }], bad, { vm: 'vm1', journal: null, deps: map.deps }), /not page-aligned/);
  assert.deepEqual(map.log, [], 'RAM is checked before anything is taken');
});

test('AssignedPci: a function that will not go back is reported, the others still go back', () => {
  const { deps, log } = fakeDeps({ failGiveBack: '0000:01:00.0' });
  const a = AssignedPci.open([{ address: '0000:00:03.0' }, { address: '0000:01:00.0' }], RAM, { vm: 'vm1', journal: null, deps });
  const lines = a.close();
  assert.deepEqual(lines, ['0000:01:00.0 not given back: e1000 would not bind (the journal keeps it for repair)', '0000:00:03.0 given back to the host (e1000)']);
  assert.ok(log.includes('give back 0000:00:03.0'));
});

test('--pci-assign and pciAssign: addresses (domain optional), force, at most 4, no repeats; bad ones name the problem', () => {
  const r = parseArgs(['run', '--pci-assign', '00:03.0', '--pci-assign', '0000:01:00.1,force'], () => ({}));
  assert.equal(r.command, 'run');
  if (r.command !== 'run') return;
  assert.deepEqual(r.config.pciAssign, [{ address: '0000:00:03.0' }, { address: '0000:01:00.1', force: true }]);
  assert.throws(() => parseArgs(['run', '--pci-assign', 'eth0'], () => ({})), /--pci-assign: "eth0" is not a PCI address like 0000:01:00.0/);
  assert.throws(() => parseArgs(['run', '--pci-assign', '00:03.0,rombar=0'], () => ({})), /unknown option "rombar=0"/);
  assert.throws(() => parseArgs(['run', '--pci-assign', '00:03.0', '--pci-assign', '0000:00:03.0'], () => ({})), /0000:00:03.0 is assigned twice/);
  assert.deepEqual(machineConfigFromJson({ pciAssign: ['0000:00:03.0', { address: '01:00.0', force: true }] }).pciAssign,
    [{ address: '0000:00:03.0' }, { address: '0000:01:00.0', force: true }]);
  assert.equal(machineConfigFromJson({}).pciAssign, undefined);
  assert.throws(() => machineConfigFromJson({ pciAssign: '0000:00:03.0' }), (e: Error) => e instanceof ConfigError && /pciAssign must be a list/.test(e.message));
  assert.throws(() => machineConfigFromJson({ pciAssign: [{ address: '0000:00:03.0', fd: 3 }] }), /pciAssign\[0\]: unknown field "fd"/);
  assert.throws(() => machineConfigFromJson({ pciAssign: [{ address: 3 }] }), /pciAssign\[0\]\.address must be a PCI address string/);
  assert.throws(() => machineConfigFromJson({ pciAssign: [{ address: '0000:00:03.0', force: 'yes' }] }), /force must be true or false/);
  assert.throws(() => machineConfigFromJson({ pciAssign: ['00:01.0', '00:02.0', '00:03.0', '00:04.0', '00:05.0'] }), /at most 4 assigned PCI functions/);
});

test('reclaimFromDeadHolders: a function a live VM holds is refused by name; one a dead VM process left is repaired first (once per process)', () => {
  const entry = (address: string, pid: number) => ({ kind: 'pci' as const, address, vendorId: 0x8086, deviceId: 0x100e, driver: 'e1000', driverOverride: null, pid, vm: `vm${pid}`, takenAt: '' });
  const repaired: number[] = [];
  const opts = { self: 10, alive: (pid: number) => pid === 20, repair: (pid: number) => { repaired.push(pid); return [`PCI: gave it back after process ${pid}`]; } };
  assert.throws(() => reclaimFromDeadHolders(['0000:00:03.0'], [entry('0000:00:03.0', 20)], opts), /^Error: PCI function 0000:00:03\.0 is in VM vm20 \(process 20\)$/);
  assert.deepEqual(reclaimFromDeadHolders(['0000:00:03.0', '0000:00:04.0'], [entry('0000:00:03.0', 30), entry('0000:00:04.0', 30), entry('0000:00:05.0', 40)], opts),
    ['PCI: gave it back after process 30']);
  assert.deepEqual(repaired, [30]);
  assert.deepEqual(reclaimFromDeadHolders(['0000:00:03.0'], [entry('0000:00:03.0', 10)], opts), [], 'our own entries are ours');
});
