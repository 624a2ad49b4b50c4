// A VM's settings at a glance and its log.
import { useCallback, useEffect, useState } from 'react';
import type { VmSummary } from '../../../main/api/contract';
import { cpuCount, formatMemory, formatTime } from '../format';
import { errorSentence } from '../store';

function PathList({ paths }: { paths: string[] }) {
  if (paths.length === 0) return <span className="muted">none</span>;
  return <ul className="plain-list">{paths.map((p, i) => <li key={i}><code>{p}</code></li>)}</ul>;
}

export function Details({ vm }: { vm: VmSummary }) {
  const [log, setLog] = useState<string[] | null>(null);
  const [logError, setLogError] = useState<string | null>(null);
  const boot = vm.spec.boot;

  const loadLog = useCallback(async () => {
    setLogError(null);
    try {
      setLog(await window.porthole.getVmLog(vm.id));
    } catch (e) {
      setLogError(errorSentence(e));
    }
  }, [vm.id]);

  // Reload when the VM changes state, so a finished run's last lines are there.
  useEffect(() => { void loadLog(); }, [loadLog, vm.state]);

  return (
    <div className="details">
      <dl className="details-list">
        <dt>Memory</dt><dd>{formatMemory(vm.spec.memoryMiB)}</dd>
        <dt>Processors</dt><dd>{cpuCount(vm.spec.cpus)}</dd>
        {boot.kind === 'firmware' && (
          <>
            <dt>Boot</dt><dd>Firmware: {boot.firmware ? <code>{boot.firmware}</code> : 'the system’s SeaBIOS'}</dd>
            <dt>Disk images</dt><dd><PathList paths={boot.disks} />{boot.disks.length > 0 && <span className="note-inline">virtio-blk, in boot order.</span>}</dd>
            {boot.cdrom && <><dt>ISO image</dt><dd><code>{boot.cdrom}</code> <span className="note-inline">In a CD-ROM drive, booted first.</span></dd></>}
            {boot.optionRoms.length > 0 && <><dt>Option ROMs</dt><dd><PathList paths={boot.optionRoms} /></dd></>}
          </>
        )}
        {boot.kind === 'linux' && (
          <>
            <dt>Boot</dt><dd>Linux kernel <code>{boot.kernel}</code></dd>
            <dt>Initrd</dt><dd>{boot.initrd ? <code>{boot.initrd}</code> : <span className="muted">none</span>}</dd>
            <dt>Command line</dt><dd><code>{boot.cmdline || ' '}</code></dd>
          </>
        )}
        {boot.kind === 'flat' && (<><dt>Boot</dt><dd>Test program <code>{boot.path}</code></dd></>)}
        {vm.spec.debugExit && (<><dt>Debug exit</dt><dd>Port 0xf4 enabled</dd></>)}
        {(vm.spec.pciAssign?.length ?? 0) > 0 && (
          <><dt>PCI devices</dt><dd>
            {vm.spec.pciAssign?.map((a) => <span key={a.address}><code>{a.address}</code>{a.force ? ' (forced)' : ''} </span>)}
            <span className="note-inline">Host devices taken at start (PCI tab).</span>
          </dd></>
        )}
        <dt>Created</dt><dd>{formatTime(vm.createdAt)}</dd>
        <dt>Changed</dt><dd>{formatTime(vm.updatedAt)}</dd>
        <dt>Library id</dt><dd><code>{vm.id}</code></dd>
      </dl>
      <section className="vm-log" aria-labelledby={`log-${vm.id}`}>
        <div className="section-head">
          <h3 id={`log-${vm.id}`}>Log</h3>
          <button type="button" onClick={() => void loadLog()}>Refresh</button>
        </div>
        {logError && <p className="form-error" role="alert">{logError}</p>}
        {log && (log.length === 0
          ? <p className="muted">Nothing logged yet.</p>
          : <pre className="log-tail" tabIndex={0} aria-label="VM log">{log.join('\n')}</pre>)}
      </section>
    </div>
  );
}
