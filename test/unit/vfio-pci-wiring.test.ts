// The vfio-pci model's wiring against a fake host function on the real PCI platform (PIIX3
// PIRQ steering) and the real IRQ routing over a fake KVM: INTx on a resampling irqfd at the
// steered GSI (following the guest's PIRQ programming), MSI-X vectors' irqfd eventfds handed
// to VFIO (INTx off first), BAR parts as KVM slots (MSI-X pages left trapped) that follow the
// BAR, close(); barMmapPlan's decisions. The fuzz is in vfio-pci-fuzz.test.ts.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PCI_COMMAND } from '../../main/vmm/devices/pci';
import { barMmapPlan } from '../../main/vmm/devices/vfio/vfio-pci';
import { FakeMsiHost, setupVfio as setup } from '../helpers/fake-vfio';

test('vfio-pci INTx: off until the PIRQ is steered, then a resampling irqfd at that GSI whose eventfds VFIO gets; follows re-steering', () => {
  const { kvm, platform, host, device } = setup(24);
  assert.equal(host.intx, null, 'PIRQs start unrouted');
  // Slot 24 INTA is PIRQ (0 + 24 - 1) & 3 = D.
  platform.isaBridge.routePirqs([10, 10, 11, 11]);
  assert.equal(device.intxGsi, 11);
  const wired = host.intx as unknown as { trigger: number; unmask: number } | null;
  assert.ok(wired);
  const bound = kvm.irqfds.get(wired.trigger);
  assert.deepEqual(bound, { gsi: 11, resampleFd: wired.unmask }, 'VFIO\'s trigger is KVM\'s irqfd, VFIO\'s unmask is its resample eventfd');
  const first = host.intx as unknown as { trigger: number; unmask: number };
  platform.isaBridge.writeConfig(0x63, 1, 5);
  assert.equal(device.intxGsi, 5);
  const now = host.intx as unknown as { trigger: number; unmask: number } | null;
  assert.ok(now);
  assert.deepEqual(host.calls, [`intx ${first.trigger}/${first.unmask}`, 'intx off', `intx ${now.trigger}/${now.unmask}`]);
  assert.equal(kvm.irqfds.has(first.trigger), false, 'the old irqfd is released');
  assert.equal(kvm.irqfds.get(now.trigger)?.gsi, 5);
  platform.isaBridge.writeConfig(0x63, 1, 0x80);
  assert.equal(host.intx, null, 'routing disabled: INTx off');
  assert.equal(device.intxGsi, null);
});

test('vfio-pci MSI-X: enabling hands VFIO one irqfd eventfd per vector (INTx off first), a vector written by VFIO is the guest\'s MSI; disabling goes back to INTx', () => {
  const { kvm, platform, host, device } = setup(24);
  platform.isaBridge.routePirqs([10, 10, 11, 11]);
  const msix = device.msix!;
  assert.ok(msix);
  assert.equal(msix.vectors, 5);
  // The guest places BAR3 and writes vector 2's entry through the trapped table page.
  device.writeConfig(0x1c, 4, 0xe0000000);
  device.writeConfig(4, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
  const bar3 = device.barSpec(3)!.mmio!;
  bar3.write(2 * 16, 4, 0xfee01000); bar3.write(2 * 16 + 8, 4, 0x4062); bar3.write(2 * 16 + 12, 4, 0);
  device.writeConfig(0xa2, 2, 0x8000);
  assert.equal(host.intx, null);
  assert.ok(host.msix);
  assert.equal(host.msix.length, 5);
  assert.deepEqual(host.calls.slice(-2), ['intx off', `msix ${host.msix.join(',')}`]);
  assert.equal(device.hostInterruptMode, 'msix');
  const before = kvm.injected.length;
  kvm.fds.write(host.msix[2]); // what VFIO does when the function sends vector 2
  assert.deepEqual(kvm.injected.slice(before), [{ gsi: kvm.irqfds.get(host.msix[2])!.gsi, msi: { addressLo: 0xfee01000, addressHi: 0, data: 0x4062 } }]);
  // A masked vector's message waits in the PBA.
  kvm.fds.write(host.msix[0]);
  assert.equal(kvm.injected.length, before + 1, 'vector 0 is masked: nothing injected');
  assert.equal(bar3.read(0x2000, 4) & 1, 1, 'vector 0 pending');
  device.writeConfig(0xa2, 2, 0);
  assert.deepEqual(host.calls.slice(-2), ['msix off', `intx ${host.intx!.trigger}/${host.intx!.unmask}`]);
  assert.equal(device.hostInterruptMode, 'none');
});

test('vfio-pci MSI (no MSI-X): an emulated capability where the host\'s was; enabling hands VFIO the enabled vectors\' eventfds (INTx off first), more vectors re-enable, off goes back to INTx', () => {
  const { kvm, platform, host, device } = setup(24, new FakeMsiHost());
  platform.isaBridge.routePirqs([10, 10, 11, 11]);
  assert.equal(device.msix, null);
  assert.ok(device.msi);
  assert.equal(device.readConfig(0x34, 1), 0xd0);
  assert.equal(device.readConfig(0xd0, 1), 0x05);
  assert.equal(device.msi.vectors, 4);
  assert.ok(host.intx);
  device.writeConfig(4, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
  device.writeConfig(0xd4, 4, 0xfee02000); device.writeConfig(0xd8, 4, 0); device.writeConfig(0xdc, 2, 0x4050);
  device.writeConfig(0xd2, 2, 0x0011); // enable, MME 1: two vectors
  assert.equal(device.hostInterruptMode, 'msi');
  const two = host.msi as unknown as number[];
  assert.equal(two.length, 2);
  assert.deepEqual(host.calls.slice(-2), ['intx off', `msi ${two.join(',')}`]);
  const before = kvm.injected.length;
  kvm.fds.write(two[1]);
  assert.deepEqual(kvm.injected.slice(before).map((i) => i.msi), [{ addressLo: 0xfee02000, addressHi: 0, data: 0x4051 }], 'vector 1 sends data | 1');
  device.writeConfig(0xd2, 2, 0x0021); // MME 2: four vectors
  assert.equal((host.msi as unknown as number[]).length, 4);
  assert.deepEqual(host.calls.slice(-2), ['msi off', `msi ${(host.msi as unknown as number[]).join(',')}`]);
  device.writeConfig(0xd2, 2, 0);
  assert.equal(host.msi, null);
  assert.ok(host.intx, 'back on INTx');
  assert.equal(device.hostInterruptMode, 'none');
});

test('vfio-pci MSI: a host capability too short for ours is left out (INTx only)', () => {
  const { device } = setup(24, new FakeMsiHost(0x0c));
  assert.equal(device.msi, null);
  assert.equal(device.readConfig(0x34, 1), 0xdc, 'the chain starts at PM');
});

test('vfio-pci BAR slots: mmap\'able parts become KVM slots while the BAR decodes, the MSI-X pages stay trapped, and follow the guest\'s moves', () => {
  const { host, slots, device } = setup(24);
  assert.deepEqual(host.mapped.sort(), ['0+0/20000', '3+1000/1000', '3+3000/1000'], 'BAR3\'s table page (0) and PBA page (0x2000) are not mapped');
  assert.deepEqual(slots.ranges, [], 'nothing decodes yet');
  device.writeConfig(0x10, 4, 0xe0000000);
  device.writeConfig(0x1c, 4, 0xe0100000);
  device.writeConfig(4, 2, PCI_COMMAND.MEMORY);
  assert.deepEqual(slots.ranges, ['e0000000+20000', 'e0101000+1000', 'e0103000+1000']);
  assert.deepEqual(device.slotMappings.map(([bar, off, size, at]) => [bar, off, size, at]), [[0, 0, 0x20000, 0xe0000000], [3, 0x1000, 0x1000, 0xe0101000], [3, 0x3000, 0x1000, 0xe0103000]]);
  device.writeConfig(0x10, 4, 0xd0000000);
  assert.deepEqual(slots.ranges, ['d0000000+20000', 'e0101000+1000', 'e0103000+1000']);
  device.writeConfig(0x10, 4, 0xffffffff); // sizing with decode on: the BAR decodes at its mask, as hardware does
  assert.equal(device.readConfig(0x10, 4), 0xfffe0000);
  assert.deepEqual(slots.ranges, ['e0101000+1000', 'e0103000+1000', 'fffe0000+20000']);
  device.writeConfig(4, 2, 0);
  assert.deepEqual(slots.ranges, [], 'memory decode off removes every slot');
  device.writeConfig(0x10, 4, 0xe0000000);
  device.writeConfig(4, 2, PCI_COMMAND.MEMORY);
  device.close();
  assert.deepEqual(slots.ranges, []);
  assert.deepEqual(host.mapped, [], 'close unmaps the BARs');
});

test('vfio-pci close turns the host\'s interrupts off and releases the irqfd', () => {
  const { kvm, platform, host, device } = setup(24);
  platform.isaBridge.routePirqs([10, 10, 11, 11]);
  const trigger = host.intx!.trigger;
  device.close();
  assert.equal(host.intx, null);
  assert.equal(kvm.irqfds.has(trigger), false);
  platform.isaBridge.routePirqs([11, 11, 10, 10]);
  assert.equal(host.intx, null, 'a closed device sets nothing up again');
});

test('barMmapPlan: page-aligned parts of the mmap\'able areas inside the host size, without the pages trapped ranges touch', () => {
  assert.deepEqual(barMmapPlan(0x20000, [{ offset: 0, size: 0x20000 }], []), [{ offset: 0, size: 0x20000 }]);
  assert.deepEqual(barMmapPlan(0x4000, [{ offset: 0, size: 0x4000 }], [{ offset: 0x2000, size: 0x50 }, { offset: 0x3000, size: 8 }]),
    [{ offset: 0, size: 0x2000 }]);
  assert.deepEqual(barMmapPlan(0x4000, [{ offset: 0, size: 0x4000 }], [{ offset: 0x1ff8, size: 0x10 }]), [{ offset: 0, size: 0x1000 }, { offset: 0x3000, size: 0x1000 }],
    'a range crossing a page boundary traps both pages');
  assert.deepEqual(barMmapPlan(0x800, [{ offset: 0, size: 0x800 }], []), [], 'less than a page: trapped');
  assert.deepEqual(barMmapPlan(0x10000, [{ offset: 0x800, size: 0x2000 }, { offset: 0x8000, size: 0x100000 }], []),
    [{ offset: 0x1000, size: 0x1000 }, { offset: 0x8000, size: 0x8000 }], 'areas are cut to whole pages and to the host size');
  assert.deepEqual(barMmapPlan(0x10000, [{ offset: -4096, size: 0x2000 }, { offset: 0, size: 0 }, { offset: NaN, size: 4096 }], []), [], 'bad areas are ignored');
  assert.deepEqual(barMmapPlan(0x10000, [{ offset: 0, size: 0x4000 }, { offset: 0x2000, size: 0x4000 }], []), [{ offset: 0, size: 0x4000 }], 'overlapping areas: the first wins');
});

