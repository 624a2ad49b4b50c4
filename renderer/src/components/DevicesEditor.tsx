// The VM dialog's disks, CD-ROM drive and network cards. The NIC models and backends (and each
// backend's fields) come from one list, main/api/nic-choices.ts, so a new model or backend
// needs no change here. Problems come from the same validators main runs.
import type { VmCdromSpec, VmDiskSpec, VmNicSpec } from '../../../main/api/contract';
import { NIC_BACKEND_CHOICES, NIC_MODEL_CHOICES, nicBackendChoice } from '../../../main/api/nic-choices';
import { DEVICE_LIMITS } from '../../../main/api/schema';
import { PathField, TextField } from './fields';

export interface DevicesValue {
  disks: VmDiskSpec[];
  /** null: no CD-ROM drive. */
  cdrom: VmCdromSpec | null;
  nics: VmNicSpec[];
}

interface DevicesEditorProps {
  value: DevicesValue;
  /** The boot source allows booting from the CD (firmware). */
  canBootCd: boolean;
  nativeDialogs: boolean;
  fieldId(field: string): string;
  shown(field: string): string | null;
  touch(field: string): void;
  onChange(field: string, value: DevicesValue): void;
}

/** A new NIC's backend with every field of its kind, empty (a select's first option). */
function emptyBackend(kind: string): VmNicSpec['backend'] {
  const backend: VmNicSpec['backend'] = { kind };
  for (const f of nicBackendChoice(kind)?.fields ?? []) backend[f.key] = f.options?.[0] ?? '';
  return backend;
}

export function DevicesEditor({ value, canBootCd, nativeDialogs, fieldId, shown, touch, onChange }: DevicesEditorProps) {
  const { disks, cdrom, nics } = value;
  const setDisk = (i: number, field: string, patch: Partial<VmDiskSpec>) =>
    onChange(`disks.${i}.${field}`, { ...value, disks: disks.map((d, j) => (j === i ? { ...d, ...patch } : d)) });
  const setNic = (i: number, field: string, next: VmNicSpec) =>
    onChange(`nics.${i}.${field}`, { ...value, nics: nics.map((n, j) => (j === i ? next : n)) });

  return (
    <div className="devices-editor">
      <fieldset className="device-group">
        <legend>Disks</legend>
        {disks.length === 0 && <p className="muted">No disks.</p>}
        {disks.map((d, i) => (
          <div key={i} className="device-row" role="group" aria-label={`Disk ${i + 1}`}>
            <PathField
              id={fieldId(`disks.${i}.path`)} label={`Disk ${i + 1} image`} value={d.path} purpose="disk" nativeDialogs={nativeDialogs}
              placeholder="/images/disk.qcow2"
              problem={shown(`disks.${i}.path`) ?? shown(`disks.${i}`)} onBlur={() => touch(`disks.${i}.path`)}
              onChange={(v) => setDisk(i, 'path', { path: v })}
              onRemove={() => onChange('disks', { ...value, disks: disks.filter((_, j) => j !== i) })}
            />
            <div className="device-options">
              <label>
                Bus{' '}
                <select aria-label={`Disk ${i + 1} bus`} value={d.bus ?? 'virtio'} onChange={(e) => setDisk(i, 'bus', { bus: e.target.value as VmDiskSpec['bus'] })}>
                  <option value="virtio">virtio-blk</option>
                  <option value="sata">SATA (AHCI)</option>
                </select>
              </label>
              <label>
                Format{' '}
                <select
                  aria-label={`Disk ${i + 1} format`} value={d.format ?? 'auto'}
                  onChange={(e) => {
                    const format = e.target.value === 'auto' ? undefined : e.target.value as VmDiskSpec['format'];
                    const { format: _old, ...rest } = d;
                    onChange(`disks.${i}.format`, { ...value, disks: disks.map((x, j) => (j === i ? { ...rest, ...(format ? { format } : {}) } : x)) });
                  }}
                >
                  <option value="auto">Detect (qcow2 or raw)</option>
                  <option value="raw">raw</option>
                  <option value="qcow2">qcow2</option>
                </select>
              </label>
              <label className="check">
                <input type="checkbox" checked={d.readOnly === true} onChange={(e) => setDisk(i, 'readOnly', { readOnly: e.target.checked })} />
                Read-only
              </label>
            </div>
          </div>
        ))}
        <button
          type="button" disabled={disks.length >= DEVICE_LIMITS.disks}
          onClick={() => {
            onChange('disks', { ...value, disks: [...disks, { path: '' }] });
            requestAnimationFrame(() => document.getElementById(fieldId(`disks.${disks.length}.path`))?.focus());
          }}
        >
          Add disk
        </button>
        {shown('disks') && <p className="field-problem" role="alert">{shown('disks')}</p>}
      </fieldset>

      <fieldset className="device-group">
        <legend>CD-ROM</legend>
        <label className="check">
          <input
            type="checkbox" checked={cdrom !== null}
            onChange={(e) => onChange('cdrom', { ...value, cdrom: e.target.checked ? { path: '' } : null })}
          />
          CD-ROM drive (SATA): its disc can be changed while the VM runs
        </label>
        {cdrom !== null && (
          <>
            <PathField
              id={fieldId('cdrom.path')} label="ISO image" value={cdrom.path} purpose="cdrom" nativeDialogs={nativeDialogs}
              placeholder="Empty: no disc in the drive"
              problem={shown('cdrom.path') ?? shown('cdrom')} onBlur={() => touch('cdrom.path')}
              onChange={(v) => onChange('cdrom.path', { ...value, cdrom: { ...cdrom, path: v } })}
            />
            <label className="check">
              <input
                type="checkbox" checked={cdrom.boot === true} disabled={!canBootCd}
                onChange={(e) => onChange('cdrom.boot', { ...value, cdrom: { ...cdrom, boot: e.target.checked } })}
              />
              Boot from CD (before the hard disks)
            </label>
            {shown('cdrom.boot') && <p className="field-problem" role="alert">{shown('cdrom.boot')}</p>}
          </>
        )}
      </fieldset>

      <fieldset className="device-group">
        <legend>Network</legend>
        {nics.length === 0 && <p className="muted">No network cards.</p>}
        {nics.map((n, i) => {
          const choice = nicBackendChoice(n.backend.kind);
          const nicProblem = shown(`nics.${i}`) ?? shown(`nics.${i}.model`) ?? shown(`nics.${i}.backend.kind`);
          return (
            <div key={i} className="device-row" role="group" aria-label={`NIC ${i + 1}`}>
              <div className="device-options">
                <label>
                  Model{' '}
                  <select aria-label={`NIC ${i + 1} model`} value={n.model} onChange={(e) => setNic(i, 'model', { ...n, model: e.target.value })}>
                    {NIC_MODEL_CHOICES.map((m) => <option key={m.model} value={m.model}>{m.label}</option>)}
                  </select>
                </label>
                <label>
                  Backend{' '}
                  <select aria-label={`NIC ${i + 1} backend`} value={n.backend.kind} onChange={(e) => setNic(i, 'backend.kind', { ...n, backend: emptyBackend(e.target.value) })}>
                    {NIC_BACKEND_CHOICES.map((b) => <option key={b.kind} value={b.kind}>{b.label}</option>)}
                  </select>
                </label>
                <button
                  type="button" className="icon-button" aria-label={`Remove NIC ${i + 1}`}
                  onClick={() => onChange('nics', { ...value, nics: nics.filter((_, j) => j !== i) })}
                >
                  ✕
                </button>
              </div>
              {(choice?.fields ?? []).map((f) => {
                const field = `nics.${i}.backend.${f.key}`;
                const label = `NIC ${i + 1} ${f.label.charAt(0).toLowerCase()}${f.label.slice(1)}`;
                const v = n.backend[f.key] ?? '';
                const set = (next: string) => setNic(i, `backend.${f.key}`, { ...n, backend: { ...n.backend, [f.key]: next } });
                if (f.options) {
                  return (
                    <label key={f.key} className="field">
                      {label}{' '}
                      <select value={v} onChange={(e) => set(e.target.value)}>
                        {f.options.map((o) => <option key={o} value={o}>{o}</option>)}
                      </select>
                    </label>
                  );
                }
                return (
                  <TextField
                    key={f.key} id={fieldId(field)} label={label} value={v} placeholder={f.placeholder}
                    problem={shown(field)} onBlur={() => touch(field)} onChange={set}
                  />
                );
              })}
              <TextField
                id={fieldId(`nics.${i}.mac`)} label={`NIC ${i + 1} MAC address (optional)`} value={n.mac ?? ''} placeholder="Empty: 52:54:00:… from the VM's name"
                problem={shown(`nics.${i}.mac`)} onBlur={() => touch(`nics.${i}.mac`)}
                onChange={(v) => {
                  const { mac: _old, ...rest } = n;
                  setNic(i, 'mac', v.trim() === '' ? rest : { ...rest, mac: v.trim() });
                }}
              />
              {nicProblem && <p className="field-problem" role="alert">{nicProblem}</p>}
            </div>
          );
        })}
        <button
          type="button" disabled={nics.length >= DEVICE_LIMITS.nics}
          onClick={() => onChange('nics', { ...value, nics: [...nics, { model: NIC_MODEL_CHOICES[0].model, backend: emptyBackend('none') }] })}
        >
          Add network card
        </button>
        {shown('nics') && <p className="field-problem" role="alert">{shown('nics')}</p>}
      </fieldset>
    </div>
  );
}
