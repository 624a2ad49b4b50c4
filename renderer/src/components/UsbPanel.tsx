// The VM's USB controller: its root-hub ports and what sits on each, and plugging emulated
// devices in and out while the VM runs or is paused. Main sends no USB events, so the list
// is read again after every change and on a modest interval (a guest may reset a port).
import { useCallback, useEffect, useId, useRef, useState, type FormEvent } from 'react';
import type { UsbPathChoiceInfo, UsbPortInfo, VmSummary } from '../../../main/api/contract';
import { errorSentence, useStore, type VmStore } from '../store';
import {
  attachRequest, configuredDeviceText, formatVidPid, freePortsFor, hasUsbController, portLabel, portsInUseText,
  protocolLabel, usbKindName, usbSpeedLabel, USB_KINDS, type AttachForm, type UsbKind,
} from '../usb';
import { PathField, TextField } from './fields';
import { HostUsbDevices } from './HostUsbDevices';
import { UsbTransfers } from './UsbTransfers';

const REFRESH_MS = 3000;

function PortRow({ port, disabled, onUnplug }: { port: UsbPortInfo; disabled: boolean; onUnplug(): void }) {
  const d = port.device;
  return (
    <tr className={d ? 'usb-port-used' : 'usb-port-free'}>
      <th scope="row">Port {port.port}</th>
      <td className="usb-nowrap">{protocolLabel(port.protocol)}</td>
      {d ? (
        <>
          <td>
            <span className="usb-product">{d.product}</span>
            <span className="usb-kind">{usbKindName(d.kind)}</span>
          </td>
          <td><code>{formatVidPid(d.vendorId, d.productId)}</code></td>
          <td className="usb-nowrap">{usbSpeedLabel(d.speed)}</td>
          <td className="usb-image">
            {d.path !== null
              ? <><code>{d.path}</code> <span className="usb-access">{d.readOnly ? 'read-only' : 'read-write'}</span></>
              : d.endpoint ? <code>{d.endpoint}</code> : <span className="muted">—</span>}
          </td>
          <td className="usb-actions">
            <button type="button" disabled={disabled} onClick={onUnplug} aria-label={`Unplug ${d.product} from port ${port.port}`}>
              Unplug
            </button>
          </td>
        </>
      ) : (
        <>
          <td className="muted">Empty</td>
          <td /><td /><td /><td />
        </>
      )}
    </tr>
  );
}

/**
 * How the host devices the VM's rules took at start reach it: a whole USB controller given to
 * the VM (those devices are on none of the ports above) or the emulated xHCI, each with why.
 * The choice is made once per start, so it is read once while the VM runs.
 */
function UsbPathChoices({ store, vm }: { store: VmStore; vm: VmSummary }) {
  const [choices, setChoices] = useState<UsbPathChoiceInfo[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    let live = true;
    store.api.listUsbPathChoices(vm.id)
      .then((c) => { if (live) setChoices(c); })
      .catch((e: unknown) => { if (live) setError(errorSentence(e)); });
    return () => { live = false; };
  }, [store, vm.id]);
  if (error) return <p className="form-error" role="alert">{error}</p>;
  if (!choices || choices.length === 0) return null;
  return (
    <section className="usb-path-choices" aria-label="Host USB devices taken at start">
      <h3>Host USB devices taken at start</h3>
      <ul>
        {choices.map((c) => (
          <li key={c.hostDevice}>
            <code>{c.hostDevice}</code>{' '}
            {c.path === 'controller'
              ? <b>whole controller{c.controller ? <> <code>{c.controller}</code></> : null} given to the VM</b>
              : <b>emulated xHCI</b>}
            : {c.reason}.
          </li>
        ))}
      </ul>
    </section>
  );
}

export function UsbPanel({ store, vm }: { store: VmStore; vm: VmSummary }) {
  const state = useStore(store);
  const uid = useId();
  const [ports, setPorts] = useState<UsbPortInfo[] | null>(null);
  const [listError, setListError] = useState<string | null>(null);
  const [form, setForm] = useState<AttachForm>({ kind: 'storage', path: '', readOnly: false, port: null, backend: 'pty' });
  const [formProblem, setFormProblem] = useState<string | null>(null);
  const [working, setWorking] = useState(false);
  const generation = useRef(0);

  const controller = hasUsbController(vm.spec);
  const active = vm.state === 'running' || vm.state === 'paused';
  const busy = state.busy[vm.id] !== undefined || working;
  const nativeDialogs = state.info?.capabilities.nativeFileDialogs ?? false;

  // Only the newest answer counts: a slow periodic read must not undo a later change.
  const load = useCallback(async () => {
    const g = ++generation.current;
    try {
      const list = await store.api.listUsbPorts(vm.id);
      if (g !== generation.current) return;
      setPorts(list);
      setListError(null);
    } catch (e) {
      if (g === generation.current) setListError(errorSentence(e));
    }
  }, [store, vm.id]);

  useEffect(() => {
    generation.current++;
    setPorts(null);
    setListError(null);
    if (!active || !controller) return;
    void load();
    const timer = setInterval(() => void load(), REFRESH_MS);
    return () => clearInterval(timer);
  }, [active, controller, load]);

  const free = ports ? freePortsFor(form.kind, ports) : [];
  // A chosen port that got taken meanwhile falls back to "first free".
  const port = free.some((p) => p.port === form.port) ? form.port : null;

  const change = (patch: Partial<AttachForm>) => {
    setForm((f) => ({ ...f, ...patch }));
    setFormProblem(null);
  };

  const plugIn = async (e: FormEvent) => {
    e.preventDefault();
    const request = attachRequest({ ...form, port });
    if (!request.ok) {
      setFormProblem(request.problem);
      document.getElementById(form.kind === 'serial' ? `${uid}-backend` : `${uid}-path`)?.focus();
      return;
    }
    setWorking(true);
    const got = await store.run(vm.id, 'Plugging in…', () => store.api.attachUsbDevice(vm.id, request.device));
    if (got) {
      store.notify('info', `${vm.spec.name}: ${got.device?.product ?? usbKindName(form.kind)} plugged into port ${got.port} (${protocolLabel(got.protocol)}).`);
      setForm((f) => ({ ...f, port: null }));
    }
    await load();
    setWorking(false);
  };

  const unplug = async (p: UsbPortInfo) => {
    setWorking(true);
    await store.run(vm.id, 'Unplugging…', () => store.api.detachUsbDevice(vm.id, p.port));
    await load();
    setWorking(false);
  };

  if (!controller) {
    return (
      <div className="usb-panel">
        <p className="usb-none">
          This VM has no USB controller. To plug in USB devices, {active ? 'stop it, ' : ''}open <b>Edit…</b> and turn on
          the USB controller under Advanced.
        </p>
      </div>
    );
  }

  const configured = vm.spec.usb?.devices ?? [];
  const startList = configured.length > 0
    ? <p className="muted">Plugged in at start: {configured.map(configuredDeviceText).join('; ')}.</p>
    : null;

  if (!active) {
    return (
      <div className="usb-panel">
        <p className="muted">The USB ports can be seen and changed while the VM runs or is paused (xHCI controller: ports 1–4 USB 3, 5–8 USB 2).</p>
        {startList}
      </div>
    );
  }

  return (
    <div className="usb-panel">
      <div className="section-head">
        <h3 id={`${uid}-ports`}>USB ports</h3>
        {ports && <span className="muted" role="status">{portsInUseText(ports)}</span>}
        <button type="button" onClick={() => void load()}>Refresh</button>
      </div>
      {listError && <p className="form-error" role="alert">{listError}</p>}
      {ports === null && !listError && <p className="muted" role="status">Reading the ports…</p>}
      {ports && (
        <table className="usb-table" aria-labelledby={`${uid}-ports`}>
          <thead>
            <tr>
              <th scope="col">Port</th><th scope="col">Type</th><th scope="col">Device</th><th scope="col">VID:PID</th>
              <th scope="col">Speed</th><th scope="col">Image or host end</th><th scope="col"><span className="visually-hidden">Actions</span></th>
            </tr>
          </thead>
          <tbody>
            {ports.map((p) => <PortRow key={p.port} port={p} disabled={busy} onUnplug={() => void unplug(p)} />)}
          </tbody>
        </table>
      )}

      <UsbPathChoices key={vm.id} store={store} vm={vm} />

      <form className="usb-add" onSubmit={plugIn} aria-labelledby={`${uid}-add`} noValidate>
        <h3 id={`${uid}-add`}>Plug in a device</h3>
        <div className="usb-add-row">
          <div className="field usb-field-kind">
            <label htmlFor={`${uid}-kind`}>Device</label>
            <select id={`${uid}-kind`} value={form.kind} onChange={(e) => change({ kind: e.target.value as UsbKind, port: null })}>
              {USB_KINDS.map((k) => <option key={k.kind} value={k.kind}>{k.label}</option>)}
            </select>
          </div>
          <div className="field usb-field-port">
            <label htmlFor={`${uid}-port`}>Port</label>
            <select id={`${uid}-port`} value={port ?? ''} disabled={free.length === 0}
              onChange={(e) => change({ port: e.target.value === '' ? null : Number(e.target.value) })}>
              <option value="">{free.length ? 'First free port' : 'No free port'}</option>
              {free.map((p) => <option key={p.port} value={p.port}>{portLabel(p)}</option>)}
            </select>
          </div>
          {form.kind === 'storage' && (
            <div className="usb-field-path">
              <PathField
                id={`${uid}-path`} label="Disk image" value={form.path} purpose="disk" nativeDialogs={nativeDialogs}
                placeholder="/path/to/stick.img" hint="A raw image file; it is locked while plugged in."
                problem={formProblem} onChange={(v) => change({ path: v })}
              />
            </div>
          )}
          {form.kind === 'serial' && (
            <div className="usb-field-path">
              <TextField
                id={`${uid}-backend`} label="Host end" value={form.backend ?? ''} placeholder="pty"
                hint="As for a COM port: pty, tcp-listen:4555, unix:/path, file:/path or a /dev path. The guest sees /dev/ttyACM0."
                problem={formProblem} onChange={(v) => change({ backend: v })}
              />
            </div>
          )}
        </div>
        {ports && free.length === 0 && <p className="muted">Every port is in use: unplug a device first.</p>}
        <div className="form-actions">
          {form.kind === 'storage' && (
            <label className="check">
              <input type="checkbox" checked={form.readOnly} onChange={(e) => change({ readOnly: e.target.checked })} />
              Read-only (the guest cannot write the image)
            </label>
          )}
          <button type="submit" className="primary" disabled={busy || !ports || free.length === 0}>Plug in</button>
        </div>
      </form>
      <HostUsbDevices store={store} vm={vm} ports={ports} reload={load} disabled={busy} />
      <UsbTransfers store={store} vm={vm} />
    </div>
  );
}
