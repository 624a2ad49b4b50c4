// The VM library: a list box of VMs with state badges. Arrow keys move the selection,
// Delete asks to delete the selected VM. Running VMs show a live sparkline of exits/s.
import { useRef, type KeyboardEvent } from 'react';
import type { LibraryProblem, VmId, VmSummary } from '../../../main/api/contract';
import { bootSummary, cpuCount, formatMemory } from '../format';
import { SHORTCUTS } from '../shortcuts';
import type { StatsFeeds } from '../stats-feed';
import { Sparkline } from './Sparkline';
import { StateBadge } from './StateBadge';

interface LibraryProps {
  vms: readonly VmSummary[];
  problems: readonly LibraryProblem[];
  loaded: boolean;
  selectedId: VmId | null;
  busy: Readonly<Record<VmId, string>>;
  onSelect(id: VmId): void;
  onDelete(vm: VmSummary): void;
  onNew(): void;
  /** Live sparklines of running VMs come from here (one shared stream per VM). */
  feeds?: StatsFeeds;
}

export function Library({ vms, problems, loaded, selectedId, busy, onSelect, onDelete, onNew, feeds }: LibraryProps) {
  const listRef = useRef<HTMLUListElement>(null);
  const selectedIndex = vms.findIndex((v) => v.id === selectedId);

  const focusOption = (index: number) => {
    const vm = vms[index];
    if (!vm) return;
    onSelect(vm.id);
    requestAnimationFrame(() => listRef.current?.querySelector<HTMLElement>(`[data-vm-id="${vm.id}"]`)?.focus());
  };

  const onKeyDown = (e: KeyboardEvent<HTMLUListElement>) => {
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    const current = selectedIndex < 0 ? 0 : selectedIndex;
    switch (e.key) {
      case 'ArrowDown': focusOption(Math.min(vms.length - 1, selectedIndex < 0 ? 0 : current + 1)); break;
      case 'ArrowUp': focusOption(Math.max(0, current - 1)); break;
      case 'Home': focusOption(0); break;
      case 'End': focusOption(vms.length - 1); break;
      case 'Delete':
      case 'Backspace': {
        const vm = vms[selectedIndex];
        if (vm) onDelete(vm);
        break;
      }
      default: return;
    }
    e.preventDefault();
    e.stopPropagation();
  };

  return (
    <nav className="library" aria-labelledby="library-title">
      <div className="library-head">
        <h2 id="library-title">Virtual machines</h2>
        <span className="library-count" aria-label={`${vms.length} VMs`}>{vms.length}</span>
      </div>
      {problems.length > 0 && (
        <div className="library-problems" role="alert">
          <p>{problems.length === 1 ? 'One library file could not be loaded:' : `${problems.length} library files could not be loaded:`}</p>
          <ul>
            {problems.map((p) => <li key={p.file}><code>{p.file}</code>: {p.reason}</li>)}
          </ul>
        </div>
      )}
      {loaded && vms.length === 0 ? (
        <div className="library-empty">
          <p>No VMs yet.</p>
          <button type="button" className="primary" onClick={onNew} aria-keyshortcuts={SHORTCUTS.new.aria}>Create a VM</button>
          <p className="muted">or press {SHORTCUTS.new.keys}</p>
        </div>
      ) : (
        <ul ref={listRef} role="listbox" aria-labelledby="library-title" className="library-list" onKeyDown={onKeyDown}>
          {vms.map((vm, i) => {
            const selected = vm.id === selectedId;
            return (
              <li
                key={vm.id}
                role="option"
                data-vm-id={vm.id}
                aria-selected={selected}
                // One tab stop for the whole list: the selected VM (or the first).
                tabIndex={selected || (selectedIndex < 0 && i === 0) ? 0 : -1}
                className={`library-item ${selected ? 'selected' : ''}`}
                onClick={() => onSelect(vm.id)}
                onFocus={() => { if (!selected && selectedIndex < 0) onSelect(vm.id); }}
              >
                <div className="library-item-top">
                  <span className="library-name">{vm.spec.name}</span>
                  <StateBadge state={vm.state} />
                </div>
                <div className="library-item-sub">
                  {busy[vm.id] ?? `${formatMemory(vm.spec.memoryMiB)} · ${cpuCount(vm.spec.cpus)} · ${bootSummary(vm.spec.boot)}`}
                </div>
                {feeds && (vm.state === 'running' || vm.state === 'paused') && <Sparkline vmId={vm.id} feeds={feeds} />}
              </li>
            );
          })}
        </ul>
      )}
    </nav>
  );
}
