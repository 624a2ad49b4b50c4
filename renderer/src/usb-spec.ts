// The VM dialog's USB settings (controller on/off and the passthrough path) applied to a spec's
// USB section. What the dialog does not edit (devices plugged in at start, auto-attach rules)
// stays as it was. Pure, with type-only imports, so unit tests load it on its own.
import type { VmSpec } from '../../main/api/contract';

export type UsbPassthroughPath = 'auto' | 'controller' | 'emulated';

export const USB_PASSTHROUGH_PATH_CHOICES: readonly { value: UsbPassthroughPath; label: string }[] = [
  { value: 'auto', label: 'Automatic: the whole controller when it is safe, otherwise the emulated xHCI' },
  { value: 'controller', label: 'Whole host controller (VFIO) only' },
  { value: 'emulated', label: 'Emulated xHCI only' },
];

/** The section to save: absent when the controller is off; "auto" (the default) is not written. */
export function usbSpecFromForm(controllerOn: boolean, path: UsbPassthroughPath, usb: VmSpec['usb']): VmSpec['usb'] {
  if (!controllerOn) return undefined;
  const { passthroughPath: _old, ...kept } = usb ?? { controller: 'xhci' as const, devices: [] };
  return { ...kept, controller: 'xhci', devices: usb?.devices ?? [], ...(path === 'auto' ? {} : { passthroughPath: path }) };
}
