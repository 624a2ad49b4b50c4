// What can be done to a VM in its current state, shared by the toolbar and the shortcuts.
import type { VmSummary } from '../../main/api/contract';
import type { ShortcutAction } from './shortcuts';
import type { VmStore } from './store';

export interface VmAction {
  id: ShortcutAction | 'resume';
  label: string;
  busyLabel: string;
  enabled: boolean;
  run(): Promise<unknown>;
}

export function vmActions(store: VmStore, vm: VmSummary): Record<VmAction['id'], VmAction> {
  const api = store.api;
  const busy = store.getState().busy[vm.id] !== undefined;
  const s = vm.state;
  const make = (id: VmAction['id'], label: string, busyLabel: string, allowed: boolean, call: () => Promise<unknown>, whileBusy = false): VmAction => ({
    id,
    label,
    busyLabel,
    enabled: allowed && (whileBusy || !busy),
    run: () => store.run(vm.id, busyLabel, call, { exclusive: !whileBusy }),
  });
  return {
    start: make('start', 'Start', 'Starting…', s === 'stopped' || s === 'crashed', () => api.startVm(vm.id)),
    stop: make('stop', 'Stop', 'Stopping…', s === 'running' || s === 'paused', () => api.stopVm(vm.id)),
    // Force off must work while a stop or start hangs: that is what it is for.
    'force-off': make('force-off', 'Force off', 'Forcing off…', s === 'starting' || s === 'running' || s === 'paused' || s === 'stopping', () => api.forceOffVm(vm.id), true),
    'pause-resume': make('pause-resume', 'Pause', 'Pausing…', s === 'running', () => api.pauseVm(vm.id)),
    resume: make('resume', 'Resume', 'Resuming…', s === 'paused', () => api.resumeVm(vm.id)),
    reset: make('reset', 'Reset', 'Resetting…', s === 'running' || s === 'paused', () => api.resetVm(vm.id)),
  };
}

/** What a shortcut does in the VM's current state (Ctrl+Shift+S resumes a paused VM). */
export function shortcutTarget(actions: Record<VmAction['id'], VmAction>, shortcut: ShortcutAction): VmAction {
  if (shortcut === 'start' && actions.resume.enabled) return actions.resume;
  if (shortcut === 'pause-resume' && actions.resume.enabled) return actions.resume;
  return actions[shortcut];
}
