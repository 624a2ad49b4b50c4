// How the VM's last run ended: an alert with the reason and the last log lines when it
// crashed or failed, a quiet line otherwise.
import type { VmSummary } from '../../../main/api/contract';
import { formatTime } from '../format';

export function ExitPanel({ vm }: { vm: VmSummary }) {
  const exit = vm.lastExit;
  if (!exit) return null;
  const failed = vm.state === 'crashed' || (vm.state === 'stopped' && exit.kind === 'error');
  if (!failed) {
    if (vm.state !== 'stopped') return null;
    return <p className="last-exit muted">Last run: {exit.message} ({formatTime(exit.at)})</p>;
  }
  const details = [
    exit.signal ? `signal ${exit.signal}` : null,
    exit.exitCode !== null ? `exit code ${exit.exitCode}` : null,
    formatTime(exit.at),
  ].filter(Boolean).join(' · ');
  return (
    <section className="exit-panel" role="alert" aria-labelledby={`exit-${vm.id}`}>
      <h3 id={`exit-${vm.id}`}>{exit.kind === 'crashed' ? 'The VM crashed' : 'The VM stopped because of an error'}</h3>
      <p className="exit-reason">{exit.message}</p>
      <p className="muted">{details}</p>
      {exit.logTail.length > 0 && (
        <details open>
          <summary>Last log lines</summary>
          <pre className="log-tail" tabIndex={0} aria-label="Last log lines">{exit.logTail.join('\n')}</pre>
        </details>
      )}
    </section>
  );
}
