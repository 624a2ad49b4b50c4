// Test helpers for the manager and the browser-mode server: temporary libraries, specs
// for the flat test guests, and waiting for a condition.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { VmSpec } from '../../main/api/contract';
import { guest } from './vm';

/** A fresh $XDG_CONFIG_HOME under the system temp dir; remove it with `cleanup`. */
export function tempConfigHome(): { home: string; libraryDir: string; cleanup(): void } {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-test-'));
  return {
    home,
    libraryDir: path.join(home, 'porthole', 'vms'),
    cleanup: () => fs.rmSync(home, { recursive: true, force: true }),
  };
}

/** A VM spec that runs flat test guest `name` (e.g. "echo", "hello"). */
export function flatSpec(name: string, patch: Partial<VmSpec> = {}): VmSpec {
  return {
    name: `test ${name}`,
    memoryMiB: 16,
    cpus: 1,
    boot: { kind: 'flat', path: guest(name) },
    serial: ['ui', 'none', 'none', 'none'],
    debugExit: false,
    ...patch,
  };
}

/** Resolves once `check()` holds (polling); rejects with `describe()` after `ms`. */
export function waitFor(check: () => boolean, ms: number, describe: () => string): Promise<void> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = () => {
      if (check()) return resolve();
      if (Date.now() - started > ms) return reject(new Error(describe()));
      setTimeout(poll, 10);
    };
    poll();
  });
}
