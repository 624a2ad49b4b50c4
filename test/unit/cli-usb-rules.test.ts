// `porthole usb rules FILE`, `usb rule add FILE ...`, `usb rule rm FILE N`: parsing, and the
// edit of a config file (checked whole, only usb.rules changes, written atomically).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { parseArgs, UsageError } from '../../main/cli/args';
import { runUsbRulesAction } from '../../main/cli/usb-rules-file';
import { ConfigError } from '../../main/vmm/config';

const noFile = (): unknown => { throw new Error('no config file in these tests'); };

test('parsing: rules, rule add with every match flag, rule rm; bad flags name themselves', () => {
  assert.deepEqual(parseArgs(['usb', 'rules', 'vm.json'], noFile), { command: 'usb-rules', file: 'vm.json', action: { op: 'list' } });
  assert.deepEqual(parseArgs(['usb', 'rule', 'add', 'vm.json', '--vid', '0x46f4', '--pid=0001', '--serial', 'S 1', '--class', '08', '--port-path', '1-1.4', '--port', '5', '--force'], noFile),
    { command: 'usb-rules', file: 'vm.json', action: { op: 'add', rule: { match: { vendorId: 0x46f4, productId: 1, serial: 'S 1', classCode: 8, portPath: '1-1.4' }, port: 5, force: true } } });
  assert.deepEqual(parseArgs(['usb', 'rule', 'rm', 'vm.json', '2'], noFile), { command: 'usb-rules', file: 'vm.json', action: { op: 'remove', index: 2 } });
  const usage: [string[], RegExp][] = [
    [['usb', 'rule', 'add', 'vm.json'], /--vid, --pid, --serial, --class or --port-path|at least one/],
    [['usb', 'rule', 'add', 'vm.json', '--vid', 'xyz'], /^--vid must be a number/],
    [['usb', 'rule', 'add', 'vm.json', '--class', '300'], /^--class must be a number from 0 to 0xff/],
    [['usb', 'rule', 'add', 'vm.json', '--vid', '1', '--port', '9'], /^--port must be a whole number from 1 to 8/],
    [['usb', 'rule', 'add', 'vm.json', '--port-path', '/dev'], /^--port-path must be a host port path/],
    [['usb', 'rule', 'add', 'vm.json', '--vid', '1', '--vid', '2'], /--vid may be given once/],
    [['usb', 'rule', 'add', 'vm.json', '--bogus', '1'], /unknown option --bogus/],
    [['usb', 'rule', 'rm', 'vm.json', 'x'], /a rule number/],
    [['usb', 'rule', 'frob'], /needs add or rm/],
    [['usb', 'rules'], /takes one VM config file/],
  ];
  for (const [argv, re] of usage) {
    assert.throws(() => parseArgs(argv, noFile), (e: Error) => e instanceof UsageError && re.test(e.message), argv.join(' '));
  }
});

test('editing a config file: rules added and removed, other fields kept, no temp file left, a bad file refused', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-rules-'));
  const file = path.join(dir, 'vm.json');
  const original = { name: 'dev board', memory: '512M', usb: { controller: 'xhci', devices: [{ kind: 'keyboard' }] } };
  fs.writeFileSync(file, JSON.stringify(original));
  assert.equal(runUsbRulesAction(file, { op: 'list' }), 'no USB rules\n');
  assert.equal(runUsbRulesAction(file, { op: 'add', rule: { match: { vendorId: 0x46f4, productId: 1 } } }), 'rule 1 added: 46f4:0001\n');
  assert.equal(runUsbRulesAction(file, { op: 'add', rule: { match: { serial: 'X' }, port: 6 } }), 'rule 2 added: serial X (guest port 6)\n');
  assert.equal(runUsbRulesAction(file, { op: 'list' }), '1  46f4:0001\n2  serial X (guest port 6)\n');
  const written = JSON.parse(fs.readFileSync(file, 'utf8'));
  assert.equal(written.name, 'dev board');
  assert.equal(written.memory, '512M');
  assert.deepEqual(written.usb.devices, [{ kind: 'keyboard' }]);
  assert.deepEqual(written.usb.rules, [{ match: { vendorId: '0x46f4', productId: '0x0001' } }, { match: { serial: 'X' }, port: 6 }]);
  assert.deepEqual(fs.readdirSync(dir), ['vm.json'], 'no temp file left');
  assert.throws(() => runUsbRulesAction(file, { op: 'remove', index: 3 }), /has USB rules 1 to 2; there is no rule 3/);
  assert.equal(runUsbRulesAction(file, { op: 'remove', index: 1 }), 'rule 1 removed: 46f4:0001\n');
  assert.equal(runUsbRulesAction(file, { op: 'list' }), '1  serial X (guest port 6)\n');
  // A config without a usb section gets one with a controller.
  const bare = path.join(dir, 'bare.json');
  fs.writeFileSync(bare, '{"name": "b"}');
  runUsbRulesAction(bare, { op: 'add', rule: { match: { classCode: 3 } } });
  assert.deepEqual(JSON.parse(fs.readFileSync(bare, 'utf8')).usb, { controller: 'xhci', rules: [{ match: { classCode: '0x03' } }] });
  // Bad files are refused with a sentence and left alone.
  const broken = path.join(dir, 'broken.json');
  fs.writeFileSync(broken, '{"name": 5}');
  assert.throws(() => runUsbRulesAction(broken, { op: 'add', rule: { match: { vendorId: 1 } } }), (e: Error) => e instanceof ConfigError && /name must be a non-empty string/.test(e.message));
  assert.equal(fs.readFileSync(broken, 'utf8'), '{"name": 5}');
  assert.throws(() => runUsbRulesAction(path.join(dir, 'missing.json'), { op: 'list' }), /cannot read config file .*ENOENT/);
  fs.rmSync(dir, { recursive: true });
});
