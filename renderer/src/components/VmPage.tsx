// One VM: its controls, how its last run ended, and tabs for the console, serial ports,
// disks and network (changing the CD while it runs), USB, PCI assignment, performance graphs and details.
import { useId, useRef, type KeyboardEvent } from 'react';
import type { ConsolePort, VmSummary } from '../../../main/api/contract';
import { vmActions, type VmAction } from '../actions';
import { bootSummary, cpuCount, formatMemory } from '../format';
import { SHORTCUTS } from '../shortcuts';
import { useStore, type VmStore } from '../store';
import { Console } from './Console';
import { Details } from './Details';
import { ExitPanel } from './ExitPanel';
import { SerialSettings } from './SerialSettings';
import { StateBadge } from './StateBadge';
import type { StatsFeeds } from '../stats-feed';
import { PerfPanel } from './PerfPanel';
import { UsbPanel } from './UsbPanel';
import { DevicesPanel } from './DevicesPanel';
import { PciPanel } from './PciPanel';

const TABS = [
  { id: 'console', label: 'Console' },
  { id: 'serial', label: 'Serial ports' },
  { id: 'devices', label: 'Disks & network' },
  { id: 'usb', label: 'USB' },
  { id: 'pci', label: 'PCI' },
  { id: 'perf', label: 'Performance' },
  { id: 'details', label: 'Details' },
] as const;
export type VmTab = (typeof TABS)[number]['id'];

interface VmPageProps {
  store: VmStore;
  vm: VmSummary;
  tab: VmTab;
  onTabChange(tab: VmTab): void;
  port: ConsolePort;
  onPortChange(port: ConsolePort): void;
  onEdit(): void;
  onDelete(): void;
  feeds: StatsFeeds;
}

function ActionButton({ action, shortcut, className }: { action: VmAction; shortcut?: string; className?: string }) {
  return (
    <button
      type="button"
      className={className}
      disabled={!action.enabled}
      onClick={() => void action.run()}
      aria-keyshortcuts={shortcut}
      title={shortcut ? `${action.label} (${shortcut.replace(/Control/g, 'Ctrl')})` : action.label}
    >
      {action.label}
    </button>
  );
}

export function VmPage({ store, vm, tab, onTabChange, port, onPortChange, onEdit, onDelete, feeds }: VmPageProps) {
  const state = useStore(store);
  const actions = vmActions(store, vm);
  const busy = state.busy[vm.id];
  const uid = useId();
  const tabRefs = useRef<(HTMLButtonElement | null)[]>([]);
  const stopped = vm.state === 'stopped' || vm.state === 'crashed';

  const onTabKey = (e: KeyboardEvent) => {
    const i = TABS.findIndex((t) => t.id === tab);
    const next = e.key === 'ArrowRight' ? (i + 1) % TABS.length : e.key === 'ArrowLeft' ? (i + TABS.length - 1) % TABS.length : -1;
    if (next < 0) return;
    e.preventDefault();
    onTabChange(TABS[next].id);
    tabRefs.current[next]?.focus();
  };

  return (
    <section className="vm-page" aria-labelledby={`${uid}-title`}>
      <header className="vm-header">
        <div className="vm-title-row">
          <h2 id={`${uid}-title`} className="vm-title">{vm.spec.name}</h2>
          <StateBadge state={vm.state} />
          {busy && <span className="busy" role="status">{busy}</span>}
        </div>
        <p className="vm-summary muted">
          {formatMemory(vm.spec.memoryMiB)} · {cpuCount(vm.spec.cpus)} · {bootSummary(vm.spec.boot)}
        </p>
        <div className="vm-toolbar" role="toolbar" aria-label="VM controls">
          {actions.resume.enabled
            ? <ActionButton action={actions.resume} shortcut={SHORTCUTS.start.aria} className="primary" />
            : <ActionButton action={actions.start} shortcut={SHORTCUTS.start.aria} className="primary" />}
          <ActionButton action={actions.stop} shortcut={SHORTCUTS.stop.aria} />
          <ActionButton action={actions['pause-resume']} shortcut={SHORTCUTS['pause-resume'].aria} />
          <ActionButton action={actions.reset} shortcut={SHORTCUTS.reset.aria} />
          <ActionButton action={actions['force-off']} shortcut={SHORTCUTS['force-off'].aria} className="danger-outline" />
          <span className="toolbar-gap" />
          <button type="button" onClick={onEdit} disabled={!stopped || !!busy} title={stopped ? 'Edit settings' : 'Stop the VM to edit it'}>Edit…</button>
          <button type="button" onClick={onDelete} disabled={!stopped || !!busy} aria-keyshortcuts="Delete" title={stopped ? 'Delete (Delete)' : 'Stop the VM to delete it'}>Delete…</button>
        </div>
      </header>

      <ExitPanel vm={vm} />

      <div role="tablist" aria-label="VM views" className="tabs" onKeyDown={onTabKey}>
        {TABS.map((t, i) => (
          <button
            key={t.id}
            ref={(el) => { tabRefs.current[i] = el; }}
            type="button"
            role="tab"
            id={`${uid}-tab-${t.id}`}
            aria-selected={tab === t.id}
            aria-controls={`${uid}-panel-${t.id}`}
            tabIndex={tab === t.id ? 0 : -1}
            className={`tab ${tab === t.id ? 'active' : ''}`}
            onClick={() => onTabChange(t.id)}
          >
            {t.label}
          </button>
        ))}
      </div>
      <div
        role="tabpanel"
        id={`${uid}-panel-${tab}`}
        aria-labelledby={`${uid}-tab-${tab}`}
        className={`tab-panel tab-panel-${tab}`}
      >
        {tab === 'console' && <Console key={`${vm.id}-${port}`} vm={vm} port={port} onPortChange={onPortChange} />}
        {tab === 'serial' && <SerialSettings key={`${vm.id}-${vm.spec.serial.join('\u0000')}`} store={store} vm={vm} />}
        {tab === 'devices' && <DevicesPanel key={vm.id} vm={vm} info={state.info} />}
        {tab === 'usb' && <UsbPanel key={vm.id} store={store} vm={vm} />}
        {tab === 'pci' && <PciPanel key={vm.id} store={store} vm={vm} />}
        {tab === 'perf' && <PerfPanel key={vm.id} vm={vm} feeds={feeds} />}
        {tab === 'details' && <Details vm={vm} />}
      </div>
    </section>
  );
}
