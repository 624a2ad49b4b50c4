// Auto-attach rules and the re-enumeration window (main/host/usb-rules.ts), and their place
// in the config file (usb.rules, usb.reenumerationWindowMs).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  describeUsbRule, firstMatchingRule, type HeldDevice, type RuleDevice, ruleMatches, UsbAutoAttach, usbRuleFromJson, usbRulesFromJson,
} from '../../main/host/usb-rules';
import { ConfigError, machineConfigFromJson } from '../../main/vmm/config';

function dev(over: Partial<RuleDevice> = {}): RuleDevice {
  return {
    sysfsName: '1-1', busNumber: 1, deviceAddress: 2, vendorId: 0x46f4, productId: 0x0001, serial: 'RIGSTICK0',
    classCode: 0, interfaces: [{ classCode: 8 }], isHub: false, ...over,
  };
}

function held(d: RuleDevice, guestPort: number): HeldDevice {
  return { sysfsName: d.sysfsName, busNumber: d.busNumber, deviceAddress: d.deviceAddress, vendorId: d.vendorId, productId: d.productId, guestPort, force: false };
}

test('rules from JSON: hex text or numbers, every field checked and named', () => {
  assert.deepEqual(usbRuleFromJson({ match: { vendorId: '0x46f4', productId: '0001' }, port: 5 }, 'r'),
    { match: { vendorId: 0x46f4, productId: 1 }, port: 5 });
  assert.deepEqual(usbRuleFromJson({ match: { classCode: 8, portPath: '3-2.4', serial: 'S' }, force: true }, 'r'),
    { match: { classCode: 8, portPath: '3-2.4', serial: 'S' }, force: true });
  const bad: [unknown, RegExp][] = [
    [null, /r must be an object/],
    [{ match: {} }, /r\.match must name at least one/],
    [{ match: { vendorId: 0x10000 } }, /r\.match\.vendorId must be a number from 0 to 0xffff/],
    [{ match: { vendorId: 'xyz' } }, /r\.match\.vendorId must be/],
    [{ match: { classCode: 256 } }, /r\.match\.classCode must be a number from 0 to 0xff/],
    [{ match: { productId: 1 } }, /r\.match\.productId needs a vendorId/],
    [{ match: { portPath: '/dev/bus' } }, /r\.match\.portPath must be a host port path/],
    [{ match: { serial: '' } }, /r\.match\.serial must be a non-empty string/],
    [{ match: { vid: 1 } }, /r\.match: unknown field "vid"/],
    [{ match: { vendorId: 1 }, port: 9 }, /r\.port must be a whole number from 1 to 8/],
    [{ match: { vendorId: 1 }, force: 'yes' }, /r\.force must be true or false/],
    [{ match: { vendorId: 1 }, extra: 1 }, /r: unknown field "extra"/],
  ];
  for (const [input, re] of bad) assert.throws(() => usbRuleFromJson(input, 'r'), re);
  assert.throws(() => usbRulesFromJson({}, 'usb.rules'), /usb\.rules must be a list/);
});

test('config file: usb.rules and usb.reenumerationWindowMs, with errors naming the field', () => {
  const c = machineConfigFromJson({ usb: { controller: 'xhci', rules: [{ match: { vendorId: '46f4' } }], reenumerationWindowMs: 3000 } }, 'vm.json');
  assert.deepEqual(c.usb?.rules, [{ match: { vendorId: 0x46f4 } }]);
  assert.equal(c.usb?.reenumerationWindowMs, 3000);
  assert.equal(machineConfigFromJson({ usb: { controller: 'xhci' } }).usb?.rules, undefined);
  assert.throws(() => machineConfigFromJson({ usb: { rules: [{ match: { vendorId: -1 } }] } }, 'vm.json'),
    (e: Error) => e instanceof ConfigError && /^vm\.json: usb\.rules\[0\]\.match\.vendorId must be/.test(e.message));
  assert.throws(() => machineConfigFromJson({ usb: { reenumerationWindowMs: 1e6 } }, 'vm.json'), /vm\.json: usb\.reenumerationWindowMs must be a whole number/);
  assert.throws(() => machineConfigFromJson({ usb: { controller: 'none', rules: [{ match: { vendorId: 1 } }] } }), /rules need a controller/);
});

test('matching: every given field must match; class matches the device or any interface; hubs never', () => {
  const d = dev();
  assert.ok(ruleMatches({ match: { vendorId: 0x46f4 } }, d));
  assert.ok(ruleMatches({ match: { vendorId: 0x46f4, productId: 1, serial: 'RIGSTICK0', portPath: '1-1' } }, d));
  assert.ok(!ruleMatches({ match: { vendorId: 0x46f4, productId: 2 } }, d));
  assert.ok(!ruleMatches({ match: { serial: 'OTHER' } }, d));
  assert.ok(!ruleMatches({ match: { portPath: '1-1.1' } }, d));
  assert.ok(ruleMatches({ match: { classCode: 8 } }, d), 'interface class');
  assert.ok(!ruleMatches({ match: { classCode: 3 } }, d));
  assert.ok(ruleMatches({ match: { classCode: 2 } }, dev({ classCode: 2, interfaces: [] })), 'device class');
  assert.ok(!ruleMatches({ match: { classCode: 9 } }, dev({ classCode: 9, isHub: true })), 'hubs are never taken');
  assert.equal(firstMatchingRule([{ match: { vendorId: 1 } }, { match: { classCode: 8 } }, { match: { vendorId: 0x46f4 } }], d), 1);
  assert.equal(firstMatchingRule([], d), -1);
  assert.equal(describeUsbRule({ match: { vendorId: 0x46f4, productId: 1, portPath: '1-1' }, port: 5, force: true }),
    '46f4:0001 on host port 1-1 (guest port 5, forced)');
});

test('planner: devices present at start and new ones are attached once per appearance', () => {
  const p = new UsbAutoAttach([{ match: { vendorId: 0x46f4 }, port: 5 }]);
  const stick = dev();
  const other = dev({ sysfsName: '1-2', deviceAddress: 3, vendorId: 0x0627 });
  const a = p.update([stick, other], [], 0);
  assert.equal(a.length, 1);
  assert.deepEqual({ ...a[0], why: undefined }, { kind: 'attach', sysfsName: '1-1', port: 5, force: false, why: undefined });
  assert.match((a[0] as { why: string }).why, /rule 1 \(vendor 46f4 \(guest port 5\)\) matches 46f4:0001 on host port 1-1/);
  // Refused (say, another VM holds it): not retried on the next list.
  assert.deepEqual(p.update([stick, other], [], 1000), []);
  // Replugged (a new address): considered again.
  const back = { ...stick, deviceAddress: 9 };
  assert.equal(p.update([other], [], 2000).length, 0);
  assert.equal(p.update([back, other], [], 20000)[0]?.kind, 'attach');
});

test('planner: a device given back by the user stays with the host until it is replugged', () => {
  const p = new UsbAutoAttach([{ match: { vendorId: 0x46f4 } }]);
  const stick = dev();
  assert.equal(p.update([stick], [], 0).length, 1);
  assert.deepEqual(p.update([stick], [held(stick, 1)], 100), []);
  assert.deepEqual(p.update([stick], [], 200), [], 'detached by hand: not taken again');
});

test('planner: a device that leaves and comes back on the same port within the window returns to its guest port, rule or not', () => {
  const p = new UsbAutoAttach([], 5000);
  const stick = dev();
  p.update([stick], [], 0);
  // It left: the list lost it while the VM held it.
  assert.deepEqual(p.update([], [held(stick, 6)], 1000), [{ kind: 'gone', sysfsName: '1-1', guestPort: 6 }]);
  assert.ok(p.awaiting('1-1', 1500));
  const dfu = dev({ deviceAddress: 7, productId: 0xdf11 });
  const a = p.update([dfu], [], 3000);
  assert.equal(a.length, 1);
  assert.equal(a[0].kind, 'attach');
  if (a[0].kind === 'attach') {
    assert.equal(a[0].port, 6);
    assert.match(a[0].why, /46f4:0001 re-enumerated as 46f4:df11 on host port 1-1 within 2 s/);
  }
  assert.ok(!p.awaiting('1-1', 3000), 'used up');
  // A device on another port is not taken.
  const p2 = new UsbAutoAttach([], 5000);
  p2.update([stick], [], 0);
  p2.update([], [held(stick, 6)], 0);
  assert.deepEqual(p2.update([dev({ sysfsName: '1-2', deviceAddress: 8 })], [], 100), []);
});

test('planner: after the window the port is free again; the unplug and replug may fall between two lists', () => {
  const p = new UsbAutoAttach([], 5000);
  const stick = dev();
  p.update([stick], [], 0);
  p.noteDeparted(held(stick, 6), 1000); // its transfers said no-device
  assert.deepEqual(p.update([], [], 1100), []);
  assert.deepEqual(p.update([dev({ deviceAddress: 7, productId: 2 })], [], 7000), [], 'too late');
  // Both between two lists: the old address is gone and a new one is there.
  const q = new UsbAutoAttach([], 5000);
  q.update([stick], [], 0);
  const renum = dev({ deviceAddress: 11, productId: 0x1234 });
  const a = q.update([renum], [held(stick, 2)], 500);
  assert.deepEqual(a.map((x) => x.kind), ['gone', 'attach']);
  // A window of 0 turns re-enumeration off.
  const off = new UsbAutoAttach([], 0);
  off.update([stick], [], 0);
  assert.deepEqual(off.update([renum], [held(stick, 2)], 10).map((x) => x.kind), ['gone']);
});

test('planner: rules changed while the VM runs apply to devices that appear from then on', () => {
  const p = new UsbAutoAttach([]);
  const stick = dev();
  assert.deepEqual(p.update([stick], [], 0), []);
  p.rules = [{ match: { serial: 'RIGSTICK0' } }];
  assert.deepEqual(p.update([stick], [], 100), [], 'already there: the user attaches it by hand');
  assert.equal(p.update([{ ...stick, deviceAddress: 5 }], [], 200).length, 1);
});

test('planner: a device that comes back in the same socket on the controller\'s other bus (its peer port) stays with its VM too', () => {
  const p = new UsbAutoAttach([], 5000);
  const superSpeed = dev({ sysfsName: '2-1', busNumber: 2, peerName: '1-1' });
  p.update([superSpeed], [], 0);
  p.update([], [held(superSpeed, 1)], 100);
  const highSpeedDfu = dev({ sysfsName: '1-1', busNumber: 1, deviceAddress: 4, productId: 0xdf11, peerName: '2-1' });
  const a = p.update([highSpeedDfu], [], 900);
  assert.equal(a.length, 1);
  assert.ok(a[0].kind === 'attach' && a[0].sysfsName === '1-1' && a[0].port === 1);
  assert.match(a[0].kind === 'attach' ? a[0].why : '', /re-enumerated as 46f4:df11 on host port 1-1 \(was 2-1\)/);
});
