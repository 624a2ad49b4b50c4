// The host's USB devices, live (watchHostUsbDevices): what each is to this VM, and passing
// it through or giving it back. A device the host needs is passed only after a confirm.
import { useEffect, useId, useState } from 'react';
import type { HostUsbDeviceSummary, UsbPortInfo, VmSummary } from '../../../main/api/contract';
import { errorSentence, type VmStore } from '../store';
import {
  alwaysAttachRule, forceWarning, hostAttachSpec, offersAlwaysAttach, ruleText, hostDeviceAction, hostDeviceName, hostDeviceState, hostPortText, hostSpeedLabel, hostStateText,
  UDEV_RELOAD, UDEV_RULE_FILE,
} from '../host-usb';
import { formatVidPid, portLabel } from '../usb';
import { ConfirmDialog } from './ConfirmDialog';

interface Props {
  store: VmStore;
  vm: VmSummary;
  /** The VM's ports (null: not read yet); `reload` reads them again after a change. */
  ports: UsbPortInfo[] | null;
  reload(): Promise<void>;
  disabled: boolean;
}

export function HostUsbDevices({ store, vm, ports, reload, disabled }: Props) {
  const uid = useId();
  const [devices, setDevices] = useState<HostUsbDeviceSummary[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [port, setPort] = useState<number | null>(null);
  const [forcing, setForcing] = useState<{ device: HostUsbDeviceSummary; reason: string } | null>(null);
  const [copied, setCopied] = useState<string | null>(null);

  useEffect(() => {
    let stop: (() => void) | null = null;
    let cancelled = false;
    store.api.watchHostUsbDevices((event) => { setDevices(event.devices); setError(null); })
      .then((s) => { if (cancelled) s(); else stop = s; }, (e) => setError(errorSentence(e)));
    return () => { cancelled = true; stop?.(); };
  }, [store]);

  const running = vm.state === 'running' || vm.state === 'paused';
  const free = (ports ?? []).filter((p) => p.device === null);
  const chosen = free.some((p) => p.port === port) ? port : null;

  const attach = async (d: HostUsbDeviceSummary, force: boolean) => {
    const got = await store.run(vm.id, 'Passing the device through…', () => store.api.attachHostUsbDevice(vm.id, hostAttachSpec(d, chosen, force)));
    if (got) store.notify('info', `${vm.spec.name}: ${hostDeviceName(d)} passed through on port ${got.port}${got.device?.pathReason ? ` (emulated xHCI: ${got.device.pathReason})` : ''}.`);
    await reload();
  };

  const giveBack = async (d: HostUsbDeviceSummary, vmPort: number) => {
    const ok = await store.run(vm.id, 'Giving the device back…', () => store.api.detachUsbDevice(vm.id, vmPort));
    if (ok !== null) store.notify('info', `${vm.spec.name}: ${hostDeviceName(d)} went back to the host.`);
    await reload();
  };

  const vmHasUsb = vm.spec.usb?.controller === 'xhci';

  /** Adds a rule for the device to this VM; a running VM takes a free device now too. */
  const always = async (d: HostUsbDeviceSummary, free: boolean) => {
    const rules = await store.run(vm.id, 'Adding a rule…', () => store.api.addUsbRule(vm.id, alwaysAttachRule(d)));
    if (rules === null) return;
    store.notify('info', `${vm.spec.name}: ${hostDeviceName(d)} is attached to this VM whenever it is there (rule ${rules.length}).`);
    if (running && free) await attach(d, false);
  };

  const copy = async (rule: string) => {
    try {
      await navigator.clipboard.writeText(rule);
      setCopied(rule);
    } catch {
      setCopied(null);
      store.notify('error', 'Copying is not allowed here; select the rule and copy it by hand.');
    }
  };

  return (
    <section className="host-usb" aria-labelledby={`${uid}-title`}>
      <div className="section-head">
        <h3 id={`${uid}-title`}>Host devices</h3>
        {running && (
          <div className="field usb-field-port">
            <label htmlFor={`${uid}-port`}>Attach on</label>
            <select id={`${uid}-port`} value={chosen ?? ''} disabled={free.length === 0}
              onChange={(e) => setPort(e.target.value === '' ? null : Number(e.target.value))}>
              <option value="">{free.length ? 'First free port' : 'No free port'}</option>
              {free.map((p) => <option key={p.port} value={p.port}>{portLabel(p)}</option>)}
            </select>
          </div>
        )}
      </div>
      {error && <p className="form-error" role="alert">{error}</p>}
      {devices === null && !error && <p className="muted" role="status">Reading the host's USB devices…</p>}
      {devices !== null && devices.length === 0 && <p className="muted">This host has no USB devices.</p>}
      {devices !== null && devices.length > 0 && (
        <table className="usb-table" aria-labelledby={`${uid}-title`}>
          <thead>
            <tr>
              <th scope="col">Device</th><th scope="col">VID:PID</th><th scope="col">Speed</th><th scope="col">Host port</th>
              <th scope="col">State</th><th scope="col"><span className="visually-hidden">Actions</span></th>
            </tr>
          </thead>
          <tbody>
            {devices.map((d) => {
              const state = hostDeviceState(d, ports);
              const action = hostDeviceAction(state, running);
              const name = hostDeviceName(d);
              return (
                <tr key={d.name} className={`host-usb-${state.kind}`}>
                  <th scope="row">{name}{d.serial ? <span className="muted"> [{d.serial}]</span> : null}</th>
                  <td><code>{formatVidPid(d.vendorId, d.productId)}</code></td>
                  <td className="usb-nowrap">{hostSpeedLabel(d.speed)}</td>
                  <td className="usb-nowrap"><code>{d.name}</code> <span className="muted">({hostPortText(d)})</span></td>
                  <td>
                    {hostStateText(state)}
                    {ruleText(d, vm.id) !== null && <div className="muted host-usb-rule-of">{ruleText(d, vm.id)}</div>}
                    {state.kind === 'no-permission' && (
                      <div className="host-usb-rule">
                        <p className="muted">Install this udev rule in <code>{UDEV_RULE_FILE}</code>, run <code>{UDEV_RELOAD}</code> and replug the device:</p>
                        <code>{state.rule}</code>{' '}
                        <button type="button" onClick={() => void copy(state.rule)} aria-label={`Copy the udev rule for ${name}`}>
                          {copied === state.rule ? 'Copied' : 'Copy'}
                        </button>
                      </div>
                    )}
                  </td>
                  <td className="usb-actions">
                    {action === 'attach' && (
                      <button type="button" disabled={disabled || free.length === 0} onClick={() => void attach(d, false)} aria-label={`Attach ${name} to this VM`}>
                        Attach
                      </button>
                    )}
                    {action === 'force' && state.kind === 'host-needs' && (
                      <button type="button" className="danger" disabled={disabled || free.length === 0}
                        onClick={() => setForcing({ device: d, reason: state.reason })} aria-label={`Force ${name} into this VM`}>
                        Force…
                      </button>
                    )}
                    {offersAlwaysAttach(d, vm.id, vmHasUsb) && (
                      <button type="button" disabled={disabled} onClick={() => void always(d, state.kind === 'free' && free.length > 0)}
                        aria-label={`Always attach ${name} to this VM`}>
                        Always attach to this VM
                      </button>
                    )}
                    {action === 'detach' && state.kind === 'here' && (
                      <button type="button" disabled={disabled} onClick={() => void giveBack(d, state.port)} aria-label={`Give ${name} back to the host`}>
                        Detach
                      </button>
                    )}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
      {forcing && (
        <ConfirmDialog
          title="Pass through a device the host needs?"
          message={forceWarning(forcing.device, forcing.reason)}
          confirmLabel="Pass it through"
          danger
          onConfirm={async () => {
            const got = await store.api.attachHostUsbDevice(vm.id, hostAttachSpec(forcing.device, chosen, true));
            store.notify('info', `${vm.spec.name}: ${hostDeviceName(forcing.device)} forced through on port ${got.port}.`);
            setForcing(null);
            await reload();
          }}
          onClose={() => setForcing(null)}
        />
      )}
    </section>
  );
}
