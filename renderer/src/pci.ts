// The PCI tab (issue 11 item 6): the host's PCI devices grouped by IOMMU group, what each is to
// one VM, and the button it offers. Pure functions; types-only imports, so unit tests load this
// file on its own (test/helpers/renderer-module.ts).
import type { PciDeviceSummary, VmSummary } from '../../main/api/contract';

export interface PciGroupView {
  /** The IOMMU group's number, or null for devices in none (IOMMU off). */
  id: number | null;
  /**
   * "viable": as the kernel sees it now (no member on a host driver); "once-taken": one device is
   * on a host driver and becomes assignable by leaving it; "not-viable": two or more devices are on
   * host drivers, so none can go alone; null: no group.
   */
  status: 'viable' | 'once-taken' | 'not-viable' | null;
  devices: PciDeviceSummary[];
}

const VFIO_FRIENDLY = new Set(['vfio-pci', 'pci-stub']);

/** Devices by IOMMU group, groups in number order, devices without a group last. */
export function groupPciDevices(devices: readonly PciDeviceSummary[]): PciGroupView[] {
  const groups = new Map<number | null, PciGroupView>();
  for (const d of devices) {
    const id = d.iommuGroup?.id ?? null;
    let g = groups.get(id);
    if (g === undefined) {
      g = { id, status: null, devices: [] };
      groups.set(id, g);
    }
    g.devices.push(d);
  }
  for (const g of groups.values()) {
    if (g.id === null) continue;
    const hostHeld = g.devices.filter((d) => !d.isBridge && d.driver !== null && !VFIO_FRIENDLY.has(d.driver)).length;
    g.status = g.devices[0].iommuGroup?.viable === true ? 'viable' : hostHeld >= 2 ? 'not-viable' : 'once-taken';
  }
  return [...groups.values()].sort((a, b) => (a.id ?? Infinity) - (b.id ?? Infinity));
}

export function pciGroupTitle(g: PciGroupView): string {
  switch (g.status) {
    case null: return 'No IOMMU group (the IOMMU is off)';
    case 'viable': return `IOMMU group ${g.id}: viable`;
    case 'once-taken': return `IOMMU group ${g.id}: viable once its device leaves its host driver`;
    case 'not-viable': return `IOMMU group ${g.id}: not viable (more than one member on a host driver)`;
  }
}

export type PciDeviceState =
  /** In this VM's config; `running`: the VM runs with it now. */
  | { kind: 'here'; inUse: boolean; forced: boolean }
  /** A bridge, no IOMMU, a group that is not viable: `reason` is main's sentence. */
  | { kind: 'blocked'; reason: string }
  /** Only the host's need stands in the way: assigning needs force, after a confirm. */
  | { kind: 'host-needs'; reason: string }
  | { kind: 'free' };

/** What a host PCI device is to `vm`. */
export function pciDeviceState(d: PciDeviceSummary, vm: Pick<VmSummary, 'id' | 'spec' | 'state'>): PciDeviceState {
  const mine = (vm.spec.pciAssign ?? []).find((a) => a.address === d.address);
  if (mine !== undefined) {
    const active = vm.state === 'running' || vm.state === 'paused' || vm.state === 'starting' || vm.state === 'stopping';
    return { kind: 'here', inUse: active && d.driver === 'vfio-pci', forced: mine.force === true };
  }
  if (d.assignable) return { kind: 'free' };
  if (d.whyNotKind === 'host-needs' && d.hostNeeds !== null) return { kind: 'host-needs', reason: d.hostNeeds };
  return { kind: 'blocked', reason: d.whyNot ?? 'it cannot be assigned' };
}

function sentence(s: string): string {
  const t = s.charAt(0).toUpperCase() + s.slice(1);
  return /[.!?]$/.test(t) ? t : `${t}.`;
}

/** The state column's text. */
export function pciStateText(state: PciDeviceState): string {
  switch (state.kind) {
    case 'here':
      return state.inUse ? 'In this VM now' : `Assigned to this VM${state.forced ? ' (forced)' : ''}: it takes it at start`;
    case 'blocked': return `Cannot be assigned: ${sentence(state.reason)}`;
    case 'host-needs': return `The host needs it: ${sentence(state.reason)}`;
    case 'free': return 'Can be assigned';
  }
}

/** Other VMs' claims on the device: "Held by VM web (process 41)" and "Also assigned to VM db". */
export function pciOthersText(d: PciDeviceSummary, vmId: string): string | null {
  const parts: string[] = [];
  const others = (d.assignedTo ?? []).filter((a) => a.vm !== vmId).map((a) => a.vmName);
  if (d.heldBy !== null) parts.push(`Held now by VM ${d.heldBy}`);
  if (others.length > 0) parts.push(`Also assigned to ${others.length === 1 ? 'VM' : 'VMs'} ${others.join(', ')} (one VM at a time can run with it)`);
  return parts.length > 0 ? `${parts.join('. ')}.` : null;
}

/** The button a row offers. */
export function pciDeviceAction(state: PciDeviceState): 'assign' | 'force' | 'return' | null {
  switch (state.kind) {
    case 'here': return 'return';
    case 'free': return 'assign';
    case 'host-needs': return 'force';
    case 'blocked': return null;
  }
}

const hex4 = (n: number) => n.toString(16).padStart(4, '0');

export function pciIds(d: Pick<PciDeviceSummary, 'vendorId' | 'deviceId'>): string {
  return `${hex4(d.vendorId)}:${hex4(d.deviceId)}`;
}

/** The confirm dialog's sentence before assigning a device the host needs. */
export function pciForceWarning(d: PciDeviceSummary, reason: string): string {
  return `${d.address} (${d.className}) is needed by the host: ${reason}. When the VM starts it takes the device away from the host ` +
    'until the VM stops; the host loses what it used it for meanwhile. Assign it anyway?';
}

/** The note for a running VM: PCI devices change only at start. */
export const PCI_HOTPLUG_NOTE = 'PCI hot-plug is not supported: what you assign or return here takes effect when the VM next starts.';
