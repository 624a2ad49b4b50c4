// The USB panel's host device list (renderer/src/host-usb.ts): each device's state from one
// VM's view, the action offered, labels and the attach request; the udev rule matches main's.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { HostUsbDeviceSummary, UsbPortInfo } from '../../main/api/contract';
import { udevRule } from '../../main/host/usb-inventory';
import { loadRendererModule } from '../helpers/renderer-module';

const host = loadRendererModule<typeof import('../../renderer/src/host-usb')>('host-usb.ts');

function device(patch: Partial<HostUsbDeviceSummary>): HostUsbDeviceSummary {
  return {
    name: '1-1', busNumber: 1, deviceAddress: 2, vendorId: 0x46f4, productId: 0x0001, manufacturer: 'QEMU', product: 'QEMU USB HARDDRIVE',
    serial: 'RIGSTICK0', speed: 'super', classCode: 0, interfaces: [{ number: 0, classCode: 8, driver: 'usb-storage' }], isHub: false,
    accessible: true, permissionHint: null, heldBy: null, hostNeeds: null, ...patch,
  };
}

function ports(hostOnPort: Record<number, string>): UsbPortInfo[] {
  return [1, 2, 3, 4, 5, 6, 7, 8].map((port) => ({
    port, protocol: port <= 4 ? 'usb3' : 'usb2',
    device: hostOnPort[port] === undefined ? null : {
      kind: 'host', name: `host ${hostOnPort[port]}`, product: 'x', speed: 'super', vendorId: 0x46f4, productId: 1, path: null, readOnly: null,
      hostDevice: hostOnPort[port],
    },
  }));
}

test('state: in this VM (by the port\'s host device), in another VM, hub, no permission, host needs it, free', () => {
  const mine = ports({ 3: '1-1' });
  // heldBy names this VM too while it holds it: the port list decides "here".
  assert.deepEqual(host.hostDeviceState(device({ heldBy: 'vm-a (process 12)' }), mine), { kind: 'here', port: 3 });
  assert.deepEqual(host.hostDeviceState(device({ heldBy: 'vm-b (process 13)' }), ports({})), { kind: 'other', vm: 'vm-b (process 13)' });
  assert.deepEqual(host.hostDeviceState(device({ heldBy: 'vm-b (process 13)' }), null), { kind: 'other', vm: 'vm-b (process 13)' });
  assert.deepEqual(host.hostDeviceState(device({ name: '1-3', isHub: true, hostNeeds: 'it is a hub' }), mine), { kind: 'hub' });
  assert.deepEqual(host.hostDeviceState(device({ name: '1-2', accessible: false, vendorId: 0x0627 }), mine),
    { kind: 'no-permission', rule: udevRule(0x0627, 0x0001) }, 'the rule is exactly the one main gives');
  assert.deepEqual(host.hostDeviceState(device({ hostNeeds: 'the host uses this disk: / is mounted' }), ports({})),
    { kind: 'host-needs', reason: 'the host uses this disk: / is mounted' });
  assert.deepEqual(host.hostDeviceState(device({ name: '1-2' }), mine), { kind: 'free' });
});

test('texts and actions: attach while running, force for needed devices, detach what this VM holds', () => {
  const cases: [Parameters<typeof host.hostStateText>[0], string, string | null, string | null][] = [
    [{ kind: 'free' }, 'Free', 'attach', null],
    [{ kind: 'here', port: 2 }, 'In this VM (port 2)', 'detach', 'detach'],
    [{ kind: 'other', vm: 'vm-b (process 13)' }, 'In VM vm-b (process 13)', null, null],
    [{ kind: 'hub' }, 'A hub (not passed through)', null, null],
    [{ kind: 'no-permission', rule: 'r' }, 'No permission', null, null],
    [{ kind: 'host-needs', reason: 'it is the host\'s only keyboard' }, 'The host needs it: it is the host\'s only keyboard', 'force', null],
  ];
  for (const [state, text, running, stopped] of cases) {
    assert.equal(host.hostStateText(state), text);
    assert.equal(host.hostDeviceAction(state, true), running, `${state.kind} running`);
    assert.equal(host.hostDeviceAction(state, false), stopped, `${state.kind} stopped`);
  }
});

test('names, speeds, port paths and the attach spec', () => {
  assert.equal(host.hostDeviceName(device({})), 'QEMU QEMU USB HARDDRIVE');
  assert.equal(host.hostDeviceName(device({ manufacturer: null, product: ' ', name: '3-2.4' })), 'USB device 3-2.4');
  assert.equal(host.hostSpeedLabel('super-plus'), 'Super+ (10 Gbit/s)');
  assert.equal(host.hostSpeedLabel('low'), 'Low (1.5 Mbit/s)');
  assert.equal(host.hostSpeedLabel(null), 'Unknown');
  assert.equal(host.hostPortText(device({ name: '3-2.4', busNumber: 3 })), 'bus 3, port 2.4');
  assert.deepEqual(host.hostAttachSpec(device({}), null, false), { device: '1-1' });
  assert.deepEqual(host.hostAttachSpec(device({}), 5, true), { device: '1-1', port: 5, force: true });
  assert.match(host.forceWarning(device({}), 'the host uses this disk: the root file system / is mounted from its sda2'),
    /^QEMU QEMU USB HARDDRIVE \(1-1\) is needed by the host: the host uses this disk: the root file system \/ is mounted from its sda2\. .*anyway\?$/);
});

test('rules: which rule would take a device, "Always attach to this VM" and the rule it adds', () => {
  const d = device({});
  assert.equal(host.ruleText(d, 'vm-a'), null);
  assert.ok(host.offersAlwaysAttach(d, 'vm-a', true));
  assert.ok(!host.offersAlwaysAttach(d, 'vm-a', false), 'a VM without a USB controller');
  assert.ok(!host.offersAlwaysAttach(device({ isHub: true }), 'vm-a', true), 'hubs');
  assert.deepEqual(host.alwaysAttachRule(d), { match: { vendorId: 0x46f4, productId: 1, serial: 'RIGSTICK0' } });
  assert.deepEqual(host.alwaysAttachRule(device({ serial: null })), { match: { vendorId: 0x46f4, productId: 1 } });
  const mine = device({ wantedBy: [{ vm: 'vm-a', vmName: 'A', rule: 1, text: '46f4:0001' }] });
  assert.equal(host.ruleText(mine, 'vm-a'), 'Taken by rule 2 of this VM (46f4:0001)');
  assert.ok(!host.offersAlwaysAttach(mine, 'vm-a', true), 'it has a rule here already');
  const both = device({ wantedBy: [{ vm: 'vm-b', vmName: 'B', rule: 0, text: 'class 08' }, { vm: 'vm-a', vmName: 'A', rule: 1, text: '46f4:0001' }] });
  assert.equal(host.ruleText(both, 'vm-a'), 'Taken by rule 1 of VM B (class 08); rule 2 of this VM (46f4:0001) (the first running VM to see it takes it)');
  assert.ok(host.offersAlwaysAttach(device({ wantedBy: [{ vm: 'vm-b', vmName: 'B', rule: 0, text: 'x' }] }), 'vm-a', true));
});
