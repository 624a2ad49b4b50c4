// A VM's disks, CD-ROM drive and network cards (its settings; Edit… changes them while it is
// stopped), and on a running or paused VM the disc in each CD-ROM drive with Insert ISO… and
// Eject. An eject the guest refuses (it locked the drive) says so and offers Force eject.
import { useCallback, useEffect, useId, useState, type FormEvent } from 'react';
import type { AppInfo, CdromDriveInfo, VmSummary } from '../../../main/api/contract';
import { nicBackendChoice, NIC_MODEL_CHOICES } from '../../../main/api/nic-choices';
import { isoPathProblem } from '../../../main/api/media-input';
import { errorSentence } from '../store';
import { TextField } from './fields';

const REFRESH_MS = 3000;

function nicText(n: NonNullable<VmSummary['spec']['nics']>[number]): string {
  const model = NIC_MODEL_CHOICES.find((m) => m.model === n.model)?.label ?? n.model;
  const choice = nicBackendChoice(n.backend.kind);
  const fields = (choice?.fields ?? []).map((f) => n.backend[f.key]).filter((v) => v).join(' ');
  return `${model}, ${choice?.label ?? n.backend.kind}${fields ? ` ${fields}` : ''}${n.mac ? `, MAC ${n.mac}` : ''}`;
}

export function DevicesPanel({ vm, info }: { vm: VmSummary; info: AppInfo | null }) {
  const uid = useId();
  const spec = vm.spec;
  const live = vm.state === 'running' || vm.state === 'paused';
  const hasCd = spec.cdrom !== undefined || (spec.boot.kind === 'firmware' && spec.boot.cdrom !== '');
  const [drives, setDrives] = useState<CdromDriveInfo[] | null>(null);
  const [iso, setIso] = useState('');
  const [problem, setProblem] = useState<string | null>(null);
  const [lockRefused, setLockRefused] = useState(false);
  const [working, setWorking] = useState(false);
  const nativeDialogs = info?.capabilities.nativeFileDialogs ?? false;

  const refresh = useCallback(async () => {
    if (!live || !hasCd) return;
    try {
      setDrives(await window.porthole.listCdromDrives(vm.id));
    } catch (e) {
      setProblem(errorSentence(e));
    }
  }, [vm.id, live, hasCd]);

  useEffect(() => {
    setDrives(null);
    if (!live || !hasCd) return;
    void refresh();
    // The guest may eject or lock the disc itself.
    const timer = setInterval(() => void refresh(), REFRESH_MS);
    return () => clearInterval(timer);
  }, [refresh, live, hasCd]);

  const run = async (what: () => Promise<CdromDriveInfo[]>, onRefusal?: (message: string) => void) => {
    setWorking(true);
    setProblem(null);
    try {
      setDrives(await what());
      setLockRefused(false);
      return true;
    } catch (e) {
      const message = errorSentence(e);
      setProblem(message);
      onRefusal?.(message);
      return false;
    } finally {
      setWorking(false);
    }
  };

  const insert = async (path: string) => {
    const why = isoPathProblem(path);
    if (why) {
      setProblem(why);
      return;
    }
    if (await run(() => window.porthole.insertCdrom(vm.id, { path }))) setIso('');
  };

  const onInsert = async (e: FormEvent) => {
    e.preventDefault();
    if (nativeDialogs && iso.trim() === '') {
      try {
        const chosen = await window.porthole.chooseFile({ purpose: 'cdrom', title: 'Insert an ISO image' });
        if (chosen !== null) await insert(chosen);
      } catch (err) {
        setProblem(errorSentence(err));
      }
      return;
    }
    await insert(iso.trim());
  };

  const eject = (force: boolean) =>
    run(() => window.porthole.ejectCdrom(vm.id, force ? { force: true } : {}), (m) => setLockRefused(/locked/.test(m)));

  const drive = drives?.[0] ?? null;
  const disks = [...(spec.boot.kind === 'firmware' ? spec.boot.disks.map((path) => ({ path, bus: 'virtio' as const, readOnly: false, format: undefined })) : []), ...(spec.disks ?? [])];
  const cdPath = spec.cdrom?.path ?? (spec.boot.kind === 'firmware' ? spec.boot.cdrom : '');
  const cdBoot = spec.cdrom?.boot === true || (spec.cdrom === undefined && cdPath !== '');

  return (
    <div className="devices-panel">
      <section aria-labelledby={`${uid}-disks`}>
        <h3 id={`${uid}-disks`}>Disks</h3>
        {disks.length === 0 ? <p className="muted">No disks.</p> : (
          <ul className="plain-list">
            {disks.map((d, i) => (
              <li key={i}>
                <code>{d.path}</code> <span className="note-inline">{d.bus === 'sata' ? 'SATA' : 'virtio-blk'}{d.format ? `, ${d.format}` : ''}{d.readOnly ? ', read-only' : ''}</span>
              </li>
            ))}
          </ul>
        )}
      </section>

      <section aria-labelledby={`${uid}-cd`}>
        <h3 id={`${uid}-cd`}>CD-ROM</h3>
        {!hasCd ? <p className="muted">No CD-ROM drive (Edit… adds one).</p> : (
          <>
            <p>
              At start: {cdPath ? <code>{cdPath}</code> : <span className="muted">no disc</span>}
              {cdBoot && <span className="note-inline"> Boots from CD first.</span>}
            </p>
            {live && (
              <div className="cdrom-live" role="group" aria-label="CD-ROM drive">
                <p aria-live="polite" className="cdrom-state">
                  {drive === null ? 'Reading the drive…' : (
                    <>
                      Now: {drive.path ? <code>{drive.path}</code> : <span className="muted">{drive.trayOpen ? 'no disc (tray open)' : 'no disc'}</span>}
                      {drive.locked && <span className="note-inline"> Locked by the guest.</span>}
                    </>
                  )}
                </p>
                <form onSubmit={onInsert} className="cdrom-insert" noValidate>
                  <TextField
                    id={`${uid}-iso`} label="ISO image to insert" value={iso} placeholder={nativeDialogs ? 'Empty: choose with a dialog' : '/images/disc.iso'}
                    onChange={(v) => { setIso(v); setProblem(null); }}
                  />
                  <button type="submit" disabled={working}>Insert ISO…</button>
                  <button type="button" disabled={working || drive === null || drive.path === null} onClick={() => void eject(false)}>Eject</button>
                  {lockRefused && (
                    <button type="button" className="danger-outline" disabled={working} onClick={() => void eject(true)}>Force eject</button>
                  )}
                </form>
                {problem && <p className="form-error" role="alert">{problem}</p>}
              </div>
            )}
          </>
        )}
      </section>

      <section aria-labelledby={`${uid}-net`}>
        <h3 id={`${uid}-net`}>Network</h3>
        {(spec.nics ?? []).length === 0 ? <p className="muted">No network cards.</p> : (
          <ul className="plain-list">{(spec.nics ?? []).map((n, i) => <li key={i}>NIC {i + 1}: {nicText(n)}</li>)}</ul>
        )}
      </section>
    </div>
  );
}
