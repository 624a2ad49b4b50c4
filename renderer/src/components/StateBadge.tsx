import type { VmState } from '../../../main/api/contract';
import { STATE_LABELS } from '../format';

export function StateBadge({ state }: { state: VmState }) {
  return (
    <span className={`badge badge-${state}`}>
      <span className="badge-dot" aria-hidden="true" />
      {STATE_LABELS[state]}
    </span>
  );
}
