// A VM's auto-attach rules through the manager: kept in its settings (written atomically,
// read back by the next manager), refused without a USB controller, handed to a running
// VM process, and the start config carries them (no KVM: a scripted VM process).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import type { ApiErrorShape, VmSpec } from '../../main/api/contract';
import { VmManager } from '../../main/manager/manager';
import { machineConfigOf } from '../../main/manager/machine-config';
import { flatSpec, tempConfigHome } from '../helpers/manager';
import { ScriptedProcess } from '../helpers/scripted-process';

let home: ReturnType<typeof tempConfigHome>;
let procs: ScriptedProcess[];

function newManager(): VmManager {
  const m = new VmManager({
    libraryDir: home.libraryDir, mode: 'browser', appVersion: 't', stopTimeoutMs: 200, startTimeoutMs: 300,
    launcher: () => { const p = new ScriptedProcess(); procs.push(p); return p; },
    log: () => undefined,
  });
  m.load();
  return m;
}

beforeEach(() => {
  home = tempConfigHome();
  fs.writeFileSync(path.join(home.home, 'echo.bin'), 'x');
  procs = [];
});
afterEach(() => home.cleanup());

function spec(usb?: VmSpec['usb']): VmSpec {
  return flatSpec('echo', { boot: { kind: 'flat', path: path.join(home.home, 'echo.bin') }, ...(usb ? { usb } : {}) });
}

async function rejection(p: Promise<unknown>): Promise<ApiErrorShape> {
  try {
    await p;
  } catch (e) {
    return { code: (e as ApiErrorShape).code, message: (e as ApiErrorShape).message };
  }
  assert.fail('expected a rejection');
}

test('rules are saved with the VM, read back by the next manager, and removed by index', async () => {
  const m = newManager();
  const vm = m.createVm(spec({ controller: 'xhci', devices: [] }));
  assert.deepEqual(await m.listUsbRules(vm.id), []);
  const one = await m.addUsbRule(vm.id, { match: { vendorId: 0x46f4, productId: 1 } });
  const two = await m.addUsbRule(vm.id, { match: { classCode: 8 }, port: 5, force: true });
  assert.equal(one.length, 1);
  assert.equal(two.length, 2);
  assert.deepEqual(m.getVm(vm.id).spec.usb?.rules, two);
  const files = fs.readdirSync(home.libraryDir).filter((f) => f.endsWith('.json'));
  assert.deepEqual(files, [`${vm.id}.json`], 'no temp file left behind');
  const again = newManager();
  assert.deepEqual(await again.listUsbRules(vm.id), two);
  assert.deepEqual(machineConfigOf(again.getVm(vm.id).spec).usb?.rules, two, 'the start config carries them');
  assert.equal((await rejection(again.removeUsbRule(vm.id, 5))).code, 'not-found');
  assert.deepEqual(await again.removeUsbRule(vm.id, 0), [{ match: { classCode: 8 }, port: 5, force: true }]);
  assert.deepEqual(await again.removeUsbRule(vm.id, 0), []);
  assert.equal(again.getVm(vm.id).spec.usb?.rules, undefined, 'no empty list left in the settings');
  assert.match(again.getVmLog(vm.id).join('\n'), /rule 1 removed: 46f4:0001/);
});

test('a VM without a USB controller gets no rules; its settings are unchanged', async () => {
  const m = newManager();
  const vm = m.createVm(spec());
  const e = await rejection(m.addUsbRule(vm.id, { match: { vendorId: 1 } }));
  assert.equal(e.code, 'invalid-state');
  assert.match(e.message, /no USB controller/);
  assert.equal(m.getVm(vm.id).spec.usb, undefined);
  const none = m.createVm(spec({ controller: 'none', devices: [] }));
  assert.equal((await rejection(m.addUsbRule(none.id, { match: { vendorId: 1 } }))).code, 'invalid-state');
  assert.deepEqual(m.checkVmSpec({ ...spec({ controller: 'xhci', devices: [] }), usb: { controller: 'xhci', devices: [], rules: [{ match: { vendorId: 'zz' } }] } }),
    [{ field: 'usb.rules.0', message: 'USB rule 1 match.vendorId must be a number from 0 to 0xffff (or hex text like "0xffff").' }]);
});

test('a rule added while the VM runs goes to its process (set-rules) as well as into its settings', async () => {
  const m = newManager();
  const vm = m.createVm(spec({ controller: 'xhci', devices: [] }));
  const starting = m.startVm(vm.id);
  const proc = procs[0];
  proc.boot();
  await starting;
  const start = proc.sent.find((x) => x.type === 'start');
  assert.ok(start?.type === 'start' && start.config.usb?.rules === undefined);
  const adding = m.addUsbRule(vm.id, { match: { serial: 'RIGSTICK0' } });
  await new Promise((r) => setImmediate(r));
  const sent = proc.sent.find((x) => x.type === 'usb');
  assert.ok(sent?.type === 'usb' && sent.request.op === 'set-rules');
  assert.deepEqual(sent.request.op === 'set-rules' && sent.request.rules, [{ match: { serial: 'RIGSTICK0' } }]);
  proc.message({ type: 'reply', id: sent.id, ok: true });
  assert.equal((await adding).length, 1);
});
