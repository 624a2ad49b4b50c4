// The VM dialog's USB section: turning the controller on and off and choosing the passthrough
// path keep what the dialog does not edit (devices plugged in at start, auto-attach rules).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { defaultVmSpec, type VmSpec } from '../../main/api/contract';
import { vmSpecProblems } from '../../main/api/schema';
import { loadRendererModule } from '../helpers/renderer-module';

const usbSpec = loadRendererModule<typeof import('../../renderer/src/usb-spec')>('usb-spec.ts');

const saved: NonNullable<VmSpec['usb']> = {
  controller: 'xhci',
  devices: [{ kind: 'keyboard' }] as never,
  rules: [{ match: { vendorId: 0x0781, productId: 0x5567 } }] as never,
  passthroughPath: 'controller',
};

test('saving the dialog keeps the USB rules and devices; the path is written unless it is "auto"', () => {
  assert.deepEqual(usbSpec.usbSpecFromForm(true, 'controller', saved), saved);
  assert.deepEqual(usbSpec.usbSpecFromForm(true, 'emulated', saved), { ...saved, passthroughPath: 'emulated' });
  const { passthroughPath: _p, ...auto } = saved;
  assert.deepEqual(usbSpec.usbSpecFromForm(true, 'auto', saved), auto);
  assert.equal(usbSpec.usbSpecFromForm(false, 'controller', saved), undefined, 'controller off: no USB section');
  assert.deepEqual(usbSpec.usbSpecFromForm(true, 'auto', undefined), { controller: 'xhci', devices: [] });
  assert.deepEqual(usbSpec.usbSpecFromForm(true, 'emulated', undefined), { controller: 'xhci', devices: [], passthroughPath: 'emulated' });
});

test('every path the dialog offers is one the spec validator takes', () => {
  assert.deepEqual(usbSpec.USB_PASSTHROUGH_PATH_CHOICES.map((c) => c.value), ['auto', 'controller', 'emulated']);
  for (const c of usbSpec.USB_PASSTHROUGH_PATH_CHOICES) {
    const spec: VmSpec = { ...defaultVmSpec(), usb: usbSpec.usbSpecFromForm(true, c.value, undefined) };
    assert.deepEqual(vmSpecProblems(spec), [], c.value);
  }
});
