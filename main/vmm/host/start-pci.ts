// The host PCI functions a VM takes at start, on the VM host thread: the config's pciAssign plus
// the USB controllers the whole-controller path chose for devices its rules take
// (usb-controller-choice.ts). A pinned "controller" setting refuses the start with a sentence
// when a device's controller does not qualify or cannot be taken; under "auto" a controller
// that cannot be taken leaves its devices to the emulated path, with the failure as the reason.
import type { PciJournal } from '../../host/pci-binding';
import { planUsbControllers, type UsbChoiceRoots, type UsbPassthroughSetting, type UsbStartChoice } from '../../host/usb-controller-choice';
import type { HostUsbDeviceInfo } from '../../host/usb-inventory';
import { firstMatchingRule, type UsbRule } from '../../host/usb-rules';
import type { PciAssignConfig } from '../config';
import { AssignedPci, type PciAssignDeps, type RamMapping } from './pci-assign';

export interface StartPciInput {
  vm: string;
  pciAssign: readonly PciAssignConfig[];
  rules: readonly UsbRule[];
  setting: UsbPassthroughSetting;
  /** The host's USB devices now (the rules pick theirs from these). */
  hostUsb: readonly HostUsbDeviceInfo[];
  roots: UsbChoiceRoots;
  /** Guest RAM for the DMA maps; asked for only when some function is taken. */
  ram: () => RamMapping[];
  journal: PciJournal | null;
  /** Before taking `addresses`: gives back what dead VM processes still hold (throws for a live holder). */
  reclaim?: (addresses: string[]) => void;
  deps?: PciAssignDeps;
  log: (line: string) => void;
}

export interface StartPci {
  assigned: AssignedPci | null;
  /** Every function this run holds: the config's, then the controllers taken for USB. */
  pciAssign: PciAssignConfig[];
  /** How each device the rules took at start reaches the guest, with why. */
  choices: UsbStartChoice[];
}

/** The USB controllers to take for this run, each choice logged; throws when a pinned "controller" cannot be met. */
export function planStartControllers(input: Pick<StartPciInput, 'pciAssign' | 'rules' | 'setting' | 'hostUsb' | 'roots' | 'log'>): { controllers: PciAssignConfig[]; choices: UsbStartChoice[] } {
  if (input.rules.length === 0 || input.setting === 'emulated') return { controllers: [], choices: [] };
  const matched = input.hostUsb.filter((d) => firstMatchingRule(input.rules, d) >= 0);
  const plan = planUsbControllers(input.setting, matched, input.roots);
  for (const c of plan.choices) input.log(`USB: host device ${c.sysfsName} goes by the ${c.choice.path} path: ${c.choice.reason}`);
  const listed = new Set(input.pciAssign.map((c) => c.address));
  return { controllers: plan.controllers.filter((a) => !listed.has(a)).map((address) => ({ address })), choices: plan.choices };
}

function take(input: StartPciInput, configs: PciAssignConfig[]): AssignedPci | null {
  if (configs.length === 0) return null;
  input.reclaim?.(configs.map((c) => c.address));
  return AssignedPci.open(configs, input.ram(), { vm: input.vm, journal: input.journal, ...(input.deps ? { deps: input.deps } : {}) });
}

/** Plans and takes the run's PCI functions (see the file comment). Nothing is held when it throws. */
export function takeStartPci(input: StartPciInput): StartPci {
  const { controllers, choices } = planStartControllers(input);
  const all = [...input.pciAssign, ...controllers];
  try {
    return { assigned: take(input, all), pciAssign: all, choices };
  } catch (e) {
    const why = (e as Error).message;
    const failed = controllers.find((c) => why.includes(c.address));
    if (controllers.length === 0) throw e;
    if (input.setting === 'controller') {
      if (failed === undefined) throw e;
      throw new Error(`the VM's usbPassthroughPath is "controller", but taking USB controller ${failed.address} failed: ${why}`);
    }
    input.log(`USB: the controller path failed (${why}); the rules' devices take the emulated path`);
    const reason = `the controller path was chosen but failed: ${why}`;
    const emulated = choices.map((c) => (c.choice.path === 'controller' ? { ...c, choice: { ...c.choice, path: 'emulated' as const, reason } } : c));
    const own = [...input.pciAssign];
    return { assigned: take(input, own), pciAssign: own, choices: emulated };
  }
}
