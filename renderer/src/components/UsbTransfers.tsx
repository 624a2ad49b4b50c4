// The USB tab's capture section: a live list of the transfers on the VM's xHCI (time, device,
// endpoint, direction, type, length, status, setup packet), filtered by device and endpoint,
// and a pcapng capture to a file for Wireshark. The list watches only while it is on.
import { useEffect, useId, useRef, useState, type FormEvent } from 'react';
import type { UsbCaptureInfo, VmSummary } from '../../../main/api/contract';
import { errorSentence, type VmStore } from '../store';
import {
  applyTransfers, endpointLabel, filterChoices, filterTransfers, transferLength, transferTime, type TransferFilter, type TransferRow,
} from '../usb-transfers';

/** Rows drawn at most (the newest); the list keeps more for the filters. */
const SHOWN_ROWS = 200;

export function UsbTransfers({ store, vm }: { store: VmStore; vm: VmSummary }) {
  const uid = useId();
  const [watching, setWatching] = useState(false);
  const [rows, setRows] = useState<TransferRow[]>([]);
  const [dropped, setDropped] = useState(0);
  const [filter, setFilter] = useState<TransferFilter>({ port: null, endpoint: null });
  const [error, setError] = useState<string | null>(null);
  const [path, setPath] = useState('');
  const [capture, setCapture] = useState<UsbCaptureInfo | null>(null);
  const [captureProblem, setCaptureProblem] = useState<string | null>(null);
  const startMs = useRef<number | null>(null);

  useEffect(() => {
    if (!watching) return;
    let stop: (() => void) | null = null;
    let cancelled = false;
    store.api.watchUsbTransfers(vm.id, (event) => {
      if (startMs.current === null && event.records.length > 0) startMs.current = event.records[0].atMs;
      setRows((r) => applyTransfers(r, event.records));
      if (event.dropped > 0) setDropped((d) => d + event.dropped);
    }).then((s) => { if (cancelled) s(); else stop = s; }, (e) => { setError(errorSentence(e)); setWatching(false); });
    return () => { cancelled = true; stop?.(); };
  }, [watching, store, vm.id]);

  const startCapture = async (e: FormEvent) => {
    e.preventDefault();
    const p = path.trim();
    if (!p.startsWith('/')) {
      setCaptureProblem('Give the capture file an absolute path, e.g. /tmp/usb.pcapng.');
      return;
    }
    setCaptureProblem(null);
    const got = await store.run(vm.id, 'Starting the capture…', () => store.api.startUsbCapture(vm.id, {
      path: p, port: filter.port,
    }), { exclusive: false });
    if (got) setCapture(got);
  };

  const stopCapture = async () => {
    if (capture === null) return;
    const got = await store.run(vm.id, 'Stopping the capture…', () => store.api.stopUsbCapture(vm.id, capture.id), { exclusive: false });
    setCapture(null);
    if (got) store.notify('info', `${vm.spec.name}: ${got.packets} USB packets (${got.bytes} bytes) written to ${got.path}.`);
  };

  const choices = filterChoices(rows, filter.port);
  const shown = filterTransfers(rows, filter);
  const visible = shown.slice(-SHOWN_ROWS);
  const t0 = startMs.current ?? 0;

  return (
    <section className="usb-transfers" aria-labelledby={`${uid}-title`}>
      <div className="section-head">
        <h3 id={`${uid}-title`}>Transfers</h3>
        <button type="button" aria-pressed={watching} onClick={() => { setError(null); setWatching((w) => !w); }}>
          {watching ? 'Stop watching' : 'Watch transfers'}
        </button>
        <button type="button" disabled={rows.length === 0} onClick={() => { setRows([]); setDropped(0); startMs.current = null; }}>Clear</button>
      </div>
      {error && <p className="form-error" role="alert">{error}</p>}
      <div className="usb-add-row">
        <div className="field">
          <label htmlFor={`${uid}-dev`}>Filter by device</label>
          <select id={`${uid}-dev`} value={filter.port ?? ''}
            onChange={(e) => setFilter({ port: e.target.value === '' ? null : Number(e.target.value), endpoint: null })}>
            <option value="">Every device</option>
            {choices.ports.map((p) => <option key={p.port} value={p.port}>Port {p.port}{p.device ? `: ${p.device}` : ''}</option>)}
          </select>
        </div>
        <div className="field">
          <label htmlFor={`${uid}-ep`}>Filter by endpoint</label>
          <select id={`${uid}-ep`} value={filter.endpoint ?? ''} onChange={(e) => setFilter((f) => ({ ...f, endpoint: e.target.value === '' ? null : e.target.value }))}>
            <option value="">Every endpoint</option>
            {choices.endpoints.map((ep) => <option key={ep} value={ep}>{ep}</option>)}
          </select>
        </div>
      </div>
      <p className="muted" role="status">
        {watching || rows.length > 0
          ? `${shown.length} transfer${shown.length === 1 ? '' : 's'}${shown.length > visible.length ? ` (newest ${visible.length} shown)` : ''}${dropped > 0 ? `; ${dropped} events left out to keep up` : ''}`
          : 'Watch transfers to list what crosses the bus.'}
      </p>
      {visible.length > 0 && (
        <table className="usb-transfer-table" aria-labelledby={`${uid}-title`}>
          <thead>
            <tr>
              <th scope="col">Time (s)</th><th scope="col">Device</th><th scope="col">Endpoint</th><th scope="col">Type</th>
              <th scope="col">Length</th><th scope="col">Status</th><th scope="col">Setup / data</th>
            </tr>
          </thead>
          <tbody>
            {visible.map((r) => (
              <tr key={r.key}>
                <td className="usb-nowrap"><code>{transferTime(r.atMs, t0)}</code></td>
                <td className="usb-nowrap">{r.port}{r.device ? `: ${r.device}` : ''}</td>
                <td className="usb-nowrap">{endpointLabel(r)}</td>
                <td>{r.type}</td>
                <td className="usb-nowrap">{transferLength(r)}</td>
                <td>{r.status}{r.latencyMs !== null ? <span className="muted"> {r.latencyMs.toFixed(2)} ms</span> : null}</td>
                <td>{r.setup ?? (r.data ? <code>{r.data}</code> : <span className="muted">—</span>)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <form className="usb-add" onSubmit={startCapture} aria-labelledby={`${uid}-cap`} noValidate>
        <h3 id={`${uid}-cap`}>Capture to a file</h3>
        {capture === null ? (
          <div className="usb-add-row">
            <div className="field usb-field-path">
              <label htmlFor={`${uid}-file`}>pcapng file (Wireshark){filter.port !== null ? `, port ${filter.port} only` : ''}</label>
              <input id={`${uid}-file`} value={path} placeholder="/tmp/usb.pcapng" aria-invalid={captureProblem !== null}
                onChange={(e) => { setPath(e.target.value); setCaptureProblem(null); }} />
              {captureProblem && <p className="form-error" role="alert">{captureProblem}</p>}
            </div>
            <button type="submit" className="primary">Start capture</button>
          </div>
        ) : (
          <div className="usb-add-row">
            <p role="status">Capturing{capture.port !== null ? ` port ${capture.port}` : ''} to <code>{capture.path}</code>.</p>
            <button type="button" onClick={() => void stopCapture()}>Stop capture</button>
          </div>
        )}
      </form>
    </section>
  );
}
