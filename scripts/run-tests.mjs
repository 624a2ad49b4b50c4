#!/usr/bin/env node
// Runs the compiled node:test suites in one report. Usage: run-tests.mjs [unit|integration|kvm|e2e ...]
// koffi.view is forbidden in every test process (Electron refuses external buffers).
//
// The KVM groups (kvm, e2e) need a usable /dev/kvm. Where this host has none, they run in
// the rig's L1 (nested SVM under QEMU TCG) through dist/test/rig/kvm-venue.test.js, whose
// results fold into this same report. PORTHOLE_SKIP_KVM_TESTS=1 skips them by hand
// instead (each shows as skipped); CI never sets it and fails on any skipped test.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const KVM_GROUPS = ['kvm', 'e2e'];
const groups = process.argv.slice(2);
const selected = groups.length ? groups : ['unit', 'integration', ...KVM_GROUPS];

function find(dir) {
  let out = [];
  let entries = [];
  try { entries = fs.readdirSync(dir); } catch { return out; }
  for (const e of entries) {
    const p = path.join(dir, e);
    if (fs.statSync(p).isDirectory()) out = out.concat(find(p));
    else if (e.endsWith('.test.js')) out.push(p);
  }
  return out.sort();
}

function kvmUsable() {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

const optedOut = process.env.PORTHOLE_SKIP_KVM_TESTS === '1';
const kvmSelected = selected.filter((g) => KVM_GROUPS.includes(g));
const inRig = kvmSelected.length > 0 && !optedOut && !kvmUsable();
const hostGroups = inRig ? selected.filter((g) => !KVM_GROUPS.includes(g)) : selected;
const files = hostGroups.flatMap((g) => find(path.join(root, 'dist', 'test', g)));
const env = { ...process.env, PORTHOLE_FORBID_KOFFI_VIEW: '1' };
if (inRig) {
  const venue = path.join(root, 'dist', 'test', 'rig', 'kvm-venue.test.js');
  if (!fs.existsSync(venue)) {
    console.error(`${venue} is missing (did the build run?)`);
    process.exit(1);
  }
  files.push(venue);
  env.PORTHOLE_RIG_TEST_GROUPS = kvmSelected.join(',');
  console.log(`run-tests: /dev/kvm is not usable here, so the ${kvmSelected.join(' and ')} tests run in the rig's L1 ` +
    `(nested SVM under QEMU TCG) and fold into this report; PORTHOLE_SKIP_KVM_TESTS=1 skips them instead`);
} else if (kvmSelected.length > 0 && optedOut) {
  console.log('run-tests: PORTHOLE_SKIP_KVM_TESTS=1: the KVM tests are skipped by hand');
}
if (files.length === 0) {
  console.error(`no test files found for: ${selected.join(', ')} (did the build run?)`);
  process.exit(1);
}
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', ...files], { stdio: 'inherit', env });
process.exit(r.status ?? 1);
