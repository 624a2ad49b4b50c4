// The window: header, library, the selected VM's page, dialogs, notices and shortcuts.
import { useCallback, useEffect, useMemo, useState } from 'react';
import type { ConsolePort, VmId, VmSummary } from '../../main/api/contract';
import { shortcutTarget, vmActions } from './actions';
import { ConfirmDialog } from './components/ConfirmDialog';
import { Library } from './components/Library';
import { Notices } from './components/Notices';
import { ShortcutsDialog } from './components/ShortcutsDialog';
import { VmDialog } from './components/VmDialog';
import { VmPage, type VmTab } from './components/VmPage';
import { isNewVmShortcut, isTypingTarget, SHORTCUTS, vmShortcut } from './shortcuts';
import { useStore, type VmStore } from './store';
import { StatsFeeds } from './stats-feed';

type DialogState =
  | { kind: 'new' }
  | { kind: 'edit'; vm: VmSummary }
  | { kind: 'delete'; vm: VmSummary }
  | { kind: 'shortcuts' }
  | null;

const TAB_IDS: readonly VmTab[] = ['console', 'serial', 'usb', 'perf', 'details'];

/** "#/vm/ID/TAB" keeps the selection across reloads. */
function readHash(): { id: VmId | null; tab: VmTab } {
  const m = /^#\/vm\/([a-z0-9-]+)(?:\/([a-z]+))?$/.exec(window.location.hash);
  const tab = (TAB_IDS as readonly string[]).includes(m?.[2] ?? '') ? (m![2] as VmTab) : 'console';
  return { id: m ? m[1] : null, tab };
}

export function App({ store }: { store: VmStore }) {
  const state = useStore(store);
  const [route, setRoute] = useState(readHash);
  const [dialog, setDialog] = useState<DialogState>(null);
  const [ports, setPorts] = useState<Record<VmId, ConsolePort>>({});
  // One vm-stats stream per VM and pace, shared by the library's sparklines and the Performance tab.
  const feeds = useMemo(() => new StatsFeeds(store.api), [store]);

  const selected = state.vms.find((v) => v.id === route.id) ?? null;

  const navigate = useCallback((id: VmId | null, tab: VmTab = 'console') => {
    const hash = id ? `#/vm/${id}/${tab}` : '#/';
    if (window.location.hash !== hash) window.history.replaceState(null, '', hash);
    setRoute({ id, tab });
  }, []);

  useEffect(() => {
    const onHash = () => setRoute(readHash());
    window.addEventListener('hashchange', onHash);
    return () => window.removeEventListener('hashchange', onHash);
  }, []);

  // A deleted (or never existing) VM: fall back to the first one.
  useEffect(() => {
    if (!state.loaded || (route.id !== null && selected)) return;
    if (route.id !== null || state.vms.length > 0) navigate(state.vms[0]?.id ?? null);
  }, [state.loaded, state.vms, route.id, selected, navigate]);

  const requestDelete = useCallback((vm: VmSummary) => {
    if (vm.state === 'stopped' || vm.state === 'crashed') setDialog({ kind: 'delete', vm });
    else store.notify('error', `Stop ${vm.spec.name} before deleting it.`);
  }, [store]);

  // Shortcuts: see shortcuts.ts for which keys act where.
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      if (e.defaultPrevented || dialog !== null || document.querySelector('dialog[open]')) return;
      const typing = isTypingTarget(e.target);
      const inConsole = e.target instanceof HTMLElement && e.target.closest('.console-terminal') !== null;
      const action = vmShortcut(e);
      if (action) {
        e.preventDefault();
        if (!selected) return;
        const target = shortcutTarget(vmActions(store, selected), action);
        if (target.enabled) void target.run();
        return;
      }
      if (isNewVmShortcut(e) && !inConsole) {
        e.preventDefault();
        setDialog({ kind: 'new' });
        return;
      }
      if (typing || e.ctrlKey || e.altKey || e.metaKey) return;
      if ((e.key === 'Delete' || e.key === 'Backspace') && selected) {
        e.preventDefault();
        requestDelete(selected);
      } else if (e.key === '?') {
        e.preventDefault();
        setDialog({ kind: 'shortcuts' });
      }
    };
    window.addEventListener('keydown', onKey);
    return () => window.removeEventListener('keydown', onKey);
  }, [dialog, selected, store, requestDelete]);

  const closeDialog = useCallback(() => setDialog(null), []);
  const info = state.info;

  return (
    <div className="app">
      <header className="topbar">
        <h1 className="app-name">Porthole</h1>
        <div className="topbar-actions">
          <button type="button" className="primary" onClick={() => setDialog({ kind: 'new' })} aria-keyshortcuts={SHORTCUTS.new.aria} title="New VM (Ctrl+N)">
            New VM
          </button>
          <button type="button" onClick={() => setDialog({ kind: 'shortcuts' })} aria-keyshortcuts={SHORTCUTS.help.aria} title="Keyboard shortcuts (?)">
            Shortcuts
          </button>
        </div>
      </header>

      <div className="banners">
        {!state.connected && <p className="banner banner-warning" role="alert">The connection to Porthole was lost; reconnecting…</p>}
        {state.loadError && <p className="banner banner-error" role="alert">{state.loadError}</p>}
        {info && !info.kvmAvailable && (
          <p className="banner banner-warning" role="alert">
            VMs cannot start on this computer: {info.kvmProblem ?? 'KVM is not available.'}
          </p>
        )}
      </div>

      <div className="workspace">
        <Library
          vms={state.vms}
          problems={state.problems}
          loaded={state.loaded}
          selectedId={selected?.id ?? null}
          busy={state.busy}
          onSelect={(id) => navigate(id, route.tab)}
          onDelete={requestDelete}
          onNew={() => setDialog({ kind: 'new' })}
          feeds={feeds}
        />
        <main className="main-pane">
          {selected ? (
            <VmPage
              store={store}
              vm={selected}
              tab={route.tab}
              onTabChange={(tab) => navigate(selected.id, tab)}
              port={ports[selected.id] ?? 'com1'}
              onPortChange={(p) => setPorts((old) => ({ ...old, [selected.id]: p }))}
              onEdit={() => setDialog({ kind: 'edit', vm: selected })}
              onDelete={() => requestDelete(selected)}
              feeds={feeds}
            />
          ) : (
            <div className="empty-page">
              {state.loaded ? <p>Select a VM, or create one with <kbd>Ctrl+N</kbd>.</p> : <p role="status">Loading the VM library…</p>}
            </div>
          )}
        </main>
      </div>

      <footer className="statusbar">
        {info ? (
          <>
            <span>{info.mode === 'electron' ? 'Desktop app' : 'Browser mode'} · Porthole {info.appVersion}</span>
            <span className="statusbar-path" title={info.libraryDir}>Library: {info.libraryDir}</span>
          </>
        ) : <span>Connecting…</span>}
      </footer>

      <Notices notices={state.notices} store={store} />

      {(dialog?.kind === 'new' || dialog?.kind === 'edit') && (
        <VmDialog
          info={info}
          vm={dialog.kind === 'edit' ? dialog.vm : undefined}
          onClose={closeDialog}
          onSaved={(vm) => {
            store.upsert(vm);
            setDialog(null);
            navigate(vm.id, dialog.kind === 'new' ? 'console' : route.tab);
          }}
        />
      )}
      {dialog?.kind === 'delete' && (
        <ConfirmDialog
          title={`Delete ${dialog.vm.spec.name}?`}
          message="Its settings are removed from the library. Disk image files are kept."
          confirmLabel="Delete"
          danger
          onClose={closeDialog}
          onConfirm={async () => {
            await store.api.deleteVm(dialog.vm.id);
            store.remove(dialog.vm.id);
            setDialog(null);
            store.notify('info', `Deleted ${dialog.vm.spec.name}.`);
          }}
        />
      )}
      {dialog?.kind === 'shortcuts' && <ShortcutsDialog onClose={closeDialog} />}
    </div>
  );
}
