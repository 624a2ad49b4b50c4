// PCI assignment (issue 11 item 6): `porthole pci assign CONFIG ADDR [--force]` and `porthole pci
// return CONFIG ADDR` edit a VM config file's `pciAssign` (the file `porthole run --config`
// reads), with the same checks as the API's assignPciDevice (host/pci-assignment.ts). The file is
// read and checked whole, only `pciAssign` changes, and it is written atomically.
import { ConfigError, machineConfigFromJson } from '../vmm/config';
import { readPciDevice, type HostRoots } from '../host/pci-inventory';
import { pciAssignEntry, pciAssignRefusal } from '../host/pci-assignment';
import { readConfigJson, writeAtomically } from './usb-rules-file';

export type PciAssignAction = { op: 'assign'; address: string; force: boolean } | { op: 'return'; address: string };


/** Runs the action on `file`; returns what to print. Throws ConfigError with a sentence. */
export function runPciAssignAction(file: string, action: PciAssignAction, roots: HostRoots = {}): string {
  const raw = readConfigJson(file);
  const current = (machineConfigFromJson(raw, file).pciAssign ?? []).map((c) => ({ address: c.address, ...(c.force ? { force: true } : {}) }));
  let next;
  let said: string;
  if (action.op === 'assign') {
    const device = readPciDevice(action.address, roots);
    const refusal = pciAssignRefusal(action.address, device, current, action.force);
    if (refusal !== null || device === null) {
      throw new ConfigError(`${file}: ${(refusal?.message ?? `the host has no PCI device at ${action.address}`).replace(/\.$/, '')}${refusal?.message.includes('with force') ? ' (--force)' : ''}`);
    }
    const entry = pciAssignEntry(action.address, device, action.force);
    next = [...current, entry];
    said = `${action.address} (${device.className}) assigned${entry.force ? ' (forced)' : ''}; the VM takes it when it starts\n`;
  } else {
    if (!current.some((c) => c.address === action.address)) {
      throw new ConfigError(`${file} has ${current.length === 0 ? 'no PCI devices assigned' : `no PCI device ${action.address} assigned (it has ${current.map((c) => c.address).join(', ')})`}`);
    }
    next = current.filter((c) => c.address !== action.address);
    said = `${action.address} returned; the VM no longer takes it\n`;
  }
  const out: Record<string, unknown> = { ...raw };
  if (next.length === 0) delete out.pciAssign;
  else out.pciAssign = next.map((c) => (c.force ? c : c.address));
  machineConfigFromJson(out, file); // what we write reads back
  writeAtomically(file, `${JSON.stringify(out, null, 2)}\n`);
  return said;
}
