#!/usr/bin/env node
// Runs the compiled node:test suites. Usage: run-tests.mjs [unit|integration|e2e ...]
// koffi.view is forbidden in every test process (Electron refuses external buffers).
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const groups = process.argv.slice(2);
const selected = groups.length ? groups : ['unit', 'integration', 'e2e'];

function find(dir) {
  let out = [];
  let entries = [];
  try { entries = readdirSync(dir); } catch { return out; }
  for (const e of entries) {
    const p = path.join(dir, e);
    if (statSync(p).isDirectory()) out = out.concat(find(p));
    else if (e.endsWith('.test.js')) out.push(p);
  }
  return out.sort();
}

const files = selected.flatMap((g) => find(path.join(root, 'dist', 'test', g)));
if (files.length === 0) {
  console.error(`no test files found for: ${selected.join(', ')} (did the build run?)`);
  process.exit(1);
}
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', ...files], {
  stdio: 'inherit',
  env: { ...process.env, PORTHOLE_FORBID_KOFFI_VIEW: '1' },
});
process.exit(r.status ?? 1);
