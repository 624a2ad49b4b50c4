// Keyboard shortcuts. Ctrl+Shift combinations work everywhere, the console included
// (desktop terminals reserve them the same way); plain keys such as Ctrl+N, Delete and
// "?" act only when focus is not in a text field or the console.

export type ShortcutAction = 'start' | 'stop' | 'force-off' | 'pause-resume' | 'reset';

export interface ShortcutInfo {
  keys: string;
  /** For aria-keyshortcuts. */
  aria: string;
  description: string;
}

const CTRL_SHIFT: Record<string, ShortcutAction> = {
  KeyS: 'start',
  KeyX: 'stop',
  KeyK: 'force-off',
  KeyP: 'pause-resume',
  KeyR: 'reset',
};

export const SHORTCUTS: Record<ShortcutAction | 'new' | 'delete' | 'help' | 'close', ShortcutInfo> = {
  new: { keys: 'Ctrl+N', aria: 'Control+N', description: 'New VM' },
  start: { keys: 'Ctrl+Shift+S', aria: 'Control+Shift+S', description: 'Start the selected VM (or resume it)' },
  stop: { keys: 'Ctrl+Shift+X', aria: 'Control+Shift+X', description: 'Stop the selected VM' },
  'force-off': { keys: 'Ctrl+Shift+K', aria: 'Control+Shift+K', description: 'Force the selected VM off' },
  'pause-resume': { keys: 'Ctrl+Shift+P', aria: 'Control+Shift+P', description: 'Pause or resume the selected VM' },
  reset: { keys: 'Ctrl+Shift+R', aria: 'Control+Shift+R', description: 'Reset the selected VM' },
  delete: { keys: 'Delete or Backspace', aria: 'Delete', description: 'Delete the selected VM (asks first)' },
  help: { keys: '?', aria: 'Shift+?', description: 'Show these shortcuts' },
  close: { keys: 'Escape', aria: 'Escape', description: 'Close a dialog' },
};

export const CONSOLE_SHORTCUTS: ShortcutInfo[] = [
  { keys: 'Ctrl+Shift+C', aria: 'Control+Shift+C', description: 'Copy the console selection' },
  { keys: 'Ctrl+Shift+V', aria: 'Control+Shift+V', description: 'Paste into the console' },
];

interface KeyLike {
  type: string;
  code: string;
  key: string;
  ctrlKey: boolean;
  shiftKey: boolean;
  altKey: boolean;
  metaKey: boolean;
}

/** The VM action of a Ctrl+Shift shortcut, or null. */
export function vmShortcut(e: KeyLike): ShortcutAction | null {
  if (!e.ctrlKey || !e.shiftKey || e.altKey || e.metaKey) return null;
  return CTRL_SHIFT[e.code] ?? null;
}

/** Keys the console must leave to the app. */
export function isAppShortcut(e: KeyLike): boolean {
  return vmShortcut(e) !== null;
}

export function isNewVmShortcut(e: KeyLike): boolean {
  return e.ctrlKey && !e.shiftKey && !e.altKey && !e.metaKey && e.code === 'KeyN';
}

/** A text field, a select or the console: plain keys belong to it. */
export function isTypingTarget(target: EventTarget | null): boolean {
  if (!(target instanceof HTMLElement)) return false;
  if (target.closest('.console-terminal')) return true;
  if (target.isContentEditable) return true;
  return target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement || target instanceof HTMLSelectElement;
}
