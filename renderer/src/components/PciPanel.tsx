// The PCI tab (issue 11 item 6): the host's PCI devices by IOMMU group, assigning one to this VM
// (its config's pciAssign; the VM takes it at start) and returning it, and why a device cannot
// be assigned. Main sends no PCI events, so the list is read again after every change and every
// few seconds (a driver may bind or a VM take a device meanwhile).
import { useCallback, useEffect, useId, useRef, useState } from 'react';
import { PCI_ASSIGN_MAX, type PciDeviceSummary, type VmSummary } from '../../../main/api/contract';
import { errorSentence, useStore, type VmStore } from '../store';
import {
  groupPciDevices, PCI_HOTPLUG_NOTE, pciDeviceAction, pciDeviceState, pciForceWarning, pciGroupTitle, pciIds, pciOthersText, pciStateText,
} from '../pci';
import { ConfirmDialog } from './ConfirmDialog';

const REFRESH_MS = 5000;

export function PciPanel({ store, vm }: { store: VmStore; vm: VmSummary }) {
  const state = useStore(store);
  const uid = useId();
  const [devices, setDevices] = useState<PciDeviceSummary[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [forcing, setForcing] = useState<{ device: PciDeviceSummary; reason: string } | null>(null);
  const generation = useRef(0);

  // Only the newest answer counts: a slow periodic read must not undo a later change.
  const load = useCallback(async () => {
    const g = ++generation.current;
    try {
      const list = await store.api.listPciDevices();
      if (g !== generation.current) return;
      setDevices(list);
      setError(null);
    } catch (e) {
      if (g === generation.current) setError(errorSentence(e));
    }
  }, [store]);

  useEffect(() => {
    void load();
    const timer = setInterval(() => void load(), REFRESH_MS);
    return () => clearInterval(timer);
  }, [load]);

  const running = vm.state !== 'stopped' && vm.state !== 'crashed';
  const busy = state.busy[vm.id] !== undefined;
  const assigned = vm.spec.pciAssign ?? [];
  const full = assigned.length >= PCI_ASSIGN_MAX;

  const assign = async (d: PciDeviceSummary) => {
    const list = await store.run(vm.id, 'Assigning…', () => store.api.assignPciDevice(vm.id, { address: d.address }));
    if (list) store.notify('info', `${vm.spec.name}: ${d.address} assigned${running ? '; it takes effect at the next start' : ''}.`);
    await load();
  };

  const giveBack = async (d: PciDeviceSummary) => {
    const list = await store.run(vm.id, 'Returning…', () => store.api.returnPciDevice(vm.id, d.address));
    if (list) store.notify('info', `${vm.spec.name}: ${d.address} returned${running ? '; the VM keeps it until it stops' : ''}.`);
    await load();
  };

  return (
    <div className="pci-panel">
      <div className="section-head">
        <h3 id={`${uid}-title`}>Host PCI devices</h3>
        <span className="muted" role="status">{assigned.length} of {PCI_ASSIGN_MAX} assigned to this VM</span>
        <button type="button" onClick={() => void load()}>Refresh</button>
      </div>
      <p className="muted">
        An assigned device is taken from its host driver (bound to vfio-pci) when the VM starts and given back when it stops.
      </p>
      {running && <p className="pci-note" role="note">{PCI_HOTPLUG_NOTE}</p>}
      {error && <p className="form-error" role="alert">{error}</p>}
      {devices === null && !error && <p className="muted" role="status">Reading the host's PCI devices…</p>}
      {devices !== null && devices.length === 0 && <p className="muted">This host shows no PCI devices (no /sys/bus/pci).</p>}
      {devices !== null && groupPciDevices(devices).map((g) => {
        const headId = `${uid}-group-${g.id ?? 'none'}`;
        return (
          <section key={g.id ?? 'none'} className="pci-group" aria-labelledby={headId}>
            <h4 id={headId} className={`pci-group-title ${g.status === 'not-viable' ? 'pci-not-viable' : ''}`}>{pciGroupTitle(g)}</h4>
            <table className="usb-table pci-table" aria-labelledby={headId}>
              <thead>
                <tr>
                  <th scope="col">Address</th><th scope="col">IDs</th><th scope="col">Class</th><th scope="col">Driver</th>
                  <th scope="col">State</th><th scope="col"><span className="visually-hidden">Actions</span></th>
                </tr>
              </thead>
              <tbody>
                {g.devices.map((d) => {
                  const st = pciDeviceState(d, vm);
                  const action = pciDeviceAction(st);
                  const others = pciOthersText(d, vm.id);
                  return (
                    <tr key={d.address} className={`pci-${st.kind}`}>
                      <th scope="row"><code>{d.address}</code></th>
                      <td><code>{pciIds(d)}</code></td>
                      <td>{d.className}{d.physicalFunction ? <span className="muted"> (VF of {d.physicalFunction})</span> : null}</td>
                      <td className="usb-nowrap">{d.driver ?? <span className="muted">none</span>}</td>
                      <td className="pci-state">
                        {pciStateText(st)}
                        {others && <div className="muted">{others}</div>}
                      </td>
                      <td className="usb-actions">
                        {action === 'assign' && (
                          <button type="button" disabled={busy || full} title={full ? `A VM has at most ${PCI_ASSIGN_MAX} PCI devices` : undefined}
                            onClick={() => void assign(d)} aria-label={`Assign ${d.address} to this VM`}>
                            Assign
                          </button>
                        )}
                        {action === 'force' && st.kind === 'host-needs' && (
                          <button type="button" className="danger" disabled={busy || full}
                            onClick={() => setForcing({ device: d, reason: st.reason })} aria-label={`Force ${d.address} into this VM`}>
                            Force…
                          </button>
                        )}
                        {action === 'return' && (
                          <button type="button" disabled={busy} onClick={() => void giveBack(d)} aria-label={`Return ${d.address} to the host`}>
                            Return
                          </button>
                        )}
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
            {(g.devices[0].iommuGroup?.members.length ?? 0) > 1 && (
              <p className="muted pci-group-members">
                Members: {g.devices[0].iommuGroup?.members.join(', ')}. A device can go to a VM only while no host driver holds another member of its group.
              </p>
            )}
          </section>
        );
      })}
      {forcing && (
        <ConfirmDialog
          title="Assign a device the host needs?"
          message={pciForceWarning(forcing.device, forcing.reason)}
          confirmLabel="Assign it"
          danger
          onConfirm={async () => {
            await store.api.assignPciDevice(vm.id, { address: forcing.device.address, force: true });
            store.notify('info', `${vm.spec.name}: ${forcing.device.address} assigned (forced).`);
            setForcing(null);
            await load();
          }}
          onClose={() => setForcing(null)}
        />
      )}
    </div>
  );
}
