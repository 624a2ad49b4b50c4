// Where each COM port goes besides the app's console. Editable while the VM is stopped.
import { useId, useState } from 'react';
import type { SerialForward, VmSummary } from '../../../main/api/contract';
import { serialForwardProblem } from '../../../main/api/schema';
import { FORWARD_KINDS, joinForward, splitForward, type ForwardKind } from '../format';
import type { VmStore } from '../store';
import { FieldMessages } from './fields';

const PORT_KEYS = ['com1', 'com2', 'com3', 'com4'] as const;

export function SerialSettings({ store, vm }: { store: VmStore; vm: VmSummary }) {
  const uid = useId();
  const [draft, setDraft] = useState(() => vm.spec.serial.map(splitForward));
  const [saving, setSaving] = useState(false);
  const editable = vm.state === 'stopped' || vm.state === 'crashed';
  const values = draft.map((d) => joinForward(d.kind, d.detail.trim()));
  const problems = values.map((v, i) => {
    const why = serialForwardProblem(v);
    return why ? `COM${i + 1} ${why}.` : null;
  });
  const changed = values.some((v, i) => v !== vm.spec.serial[i]);

  const setPort = (i: number, patch: Partial<{ kind: ForwardKind; detail: string }>) =>
    setDraft((d) => d.map((p, j) => (j === i ? { ...p, ...patch } : p)));

  const save = async () => {
    setSaving(true);
    const serial = values as [SerialForward, SerialForward, SerialForward, SerialForward];
    await store.run(vm.id, 'Saving…', () => store.api.updateVm(vm.id, { ...vm.spec, serial }));
    setSaving(false);
  };

  return (
    <form
      className="serial-settings"
      onSubmit={(e) => { e.preventDefault(); if (changed && !problems.some(Boolean)) void save(); }}
      aria-describedby={`${uid}-about`}
    >
      <p id={`${uid}-about`} className="muted">
        The console always shows every port. A forward connects a port to something on the host as well.
        {!editable && ' Stop the VM to change these settings.'}
      </p>
      <fieldset disabled={!editable || saving}>
        <legend className="visually-hidden">COM port forwards</legend>
        <table className="serial-table">
          <thead>
            <tr><th scope="col">Port</th><th scope="col">Forward to</th><th scope="col">Address or path</th><th scope="col">Now at</th></tr>
          </thead>
          <tbody>
            {draft.map((d, i) => {
              const meta = FORWARD_KINDS.find((k) => k.kind === d.kind) ?? FORWARD_KINDS[0];
              const detailId = `${uid}-detail-${i}`;
              return (
                <tr key={i}>
                  <th scope="row">COM{i + 1}</th>
                  <td>
                    <select
                      aria-label={`COM${i + 1} forward`}
                      value={d.kind}
                      onChange={(e) => setPort(i, { kind: e.target.value as ForwardKind })}
                    >
                      {FORWARD_KINDS.map((k) => <option key={k.kind} value={k.kind}>{k.label}</option>)}
                    </select>
                  </td>
                  <td>
                    {meta.detail !== null ? (
                      <>
                        <input
                          id={detailId}
                          aria-label={`COM${i + 1} ${meta.detail.toLowerCase()}`}
                          value={d.detail}
                          placeholder={meta.placeholder}
                          spellCheck={false}
                          onChange={(e) => setPort(i, { detail: e.target.value })}
                          aria-invalid={problems[i] ? true : undefined}
                          aria-describedby={problems[i] ? `${detailId}-problem` : undefined}
                        />
                        <FieldMessages id={detailId} problem={problems[i]} />
                      </>
                    ) : <span className="muted">—</span>}
                  </td>
                  <td className="endpoint">{vm.endpoints[PORT_KEYS[i]] ?? <span className="muted">—</span>}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
        <div className="form-actions">
          <button type="submit" className="primary" disabled={!changed || problems.some(Boolean)}>Save serial ports</button>
          <button type="button" disabled={!changed} onClick={() => setDraft(vm.spec.serial.map(splitForward))}>Undo changes</button>
        </div>
      </fieldset>
    </form>
  );
}
