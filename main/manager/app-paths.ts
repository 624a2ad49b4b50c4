// Where the app's own files are, relative to the compiled code in dist/main/….
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** The directory holding package.json and dist/ (the repository, or the packaged app). */
export const APP_ROOT = path.resolve(__dirname, '..', '..', '..');

/** The renderer's Vite build (renderer/vite.config.ts writes here). */
export const RENDERER_DIR = path.join(APP_ROOT, 'dist', 'renderer');

export function appVersion(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(APP_ROOT, 'package.json'), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : '0.0.0';
  } catch {
    return '0.0.0';
  }
}

/**
 * The app's data directory: $XDG_DATA_HOME/porthole, else ~/.local/share/porthole (a relative
 * XDG_DATA_HOME is ignored, as the XDG spec says). Holds state that is not configuration, such
 * as the journal of host USB devices taken from the host (main/host/usb-journal.ts).
 */
export function dataDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_DATA_HOME;
  const base = xdg && path.isAbsolute(xdg) ? xdg : path.join(env.HOME || os.homedir(), '.local', 'share');
  return path.join(base, 'porthole');
}
