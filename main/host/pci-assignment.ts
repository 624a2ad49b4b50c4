// PCI assignment (issue 11 item 6): whether a host PCI function may go into a VM's config
// (pciAssign), shared by the API (manager) and the CLI (porthole pci assign). The inventory's own
// verdict decides (pci-inventory.ts whyNot); only a device the host needs may be taken, and then
// only when forced, which the caller asks the user to confirm first.
import { PCI_ASSIGN_MAX, type VmPciAssignSpec } from '../api/contract';
import type { PciDeviceInfo } from './pci-inventory';

export interface PciAssignRefusal {
  /** The API error code: "not-found" for no such device, "invalid-state" otherwise. */
  code: 'not-found' | 'invalid-state';
  message: string;
}

/**
 * Why `address` cannot be added to the list `current` (null: it can), given what the host
 * has at that address now (`device`, null for nothing) and whether the user forced it.
 */
export function pciAssignRefusal(address: string, device: PciDeviceInfo | null, current: readonly VmPciAssignSpec[], force: boolean): PciAssignRefusal | null {
  if (current.some((c) => c.address === address)) return { code: 'invalid-state', message: `This VM already has ${address} assigned.` };
  if (current.length >= PCI_ASSIGN_MAX) {
    return { code: 'invalid-state', message: `This VM already has ${PCI_ASSIGN_MAX} PCI devices assigned, the most a VM can have: return one first.` };
  }
  if (device === null) return { code: 'not-found', message: `The host has no PCI device at ${address} (it may have been removed).` };
  if (device.whyNot === null) return null;
  if (device.whyNotKind === 'host-needs' && device.hostNeeds !== null) {
    if (force) return null;
    return {
      code: 'invalid-state',
      message: `${address} is needed by the host: ${device.hostNeeds}. Assign it with force only if the host can do without it while the VM runs.`,
    };
  }
  return { code: 'invalid-state', message: `${address} cannot be assigned: ${device.whyNot}.` };
}

/** The config entry for an accepted assignment: `force` is kept only where the host needs the device. */
export function pciAssignEntry(address: string, device: PciDeviceInfo, force: boolean): VmPciAssignSpec {
  return { address, ...(force && device.hostNeeds !== null ? { force: true } : {}) };
}
