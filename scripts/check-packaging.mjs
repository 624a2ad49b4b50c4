#!/usr/bin/env node
// Validates electron-builder.yml without downloading Electron or packaging tools:
//  1. electron-builder's own loader reads it (getConfig: YAML, "extends", defaults);
//  2. electron-builder's own JSON schema accepts it (validateConfiguration), and its
//     package.json metadata rules pass (checkMetadata);
//  3. the Electron version resolves from the installed "electron" devDependency;
//  4. Linux x64 AppImage, deb and rpm targets, with deb/rpm runtime dependencies, are declared;
//  5. the files the app needs at run time are matched by "files" (and exist, after a build);
//  6. every deb dependency (or one of its alternatives) is a package apt knows, when the
//     local apt lists are usable.
// It cannot prove that the packages build (that needs the Electron zip, fpm and
// appimagetool downloads), that the rpm dependency names exist in Fedora, or that the
// packaged app starts.
// Usage: check-packaging.mjs [--project DIR] [--require-build]
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(path.join(repo, 'package.json'));
const args = process.argv.slice(2);
const projectArg = args.indexOf('--project');
const projectDir = projectArg >= 0 ? path.resolve(args[projectArg + 1] ?? '.') : repo;
const requireBuild = args.includes('--require-build');

/** Files the packaged app cannot run without (relative to the app directory). */
const RUNTIME_FILES = [
  'dist/main/app/electron-main.js',
  'dist/preload/preload.js',
  'dist/main/manager/vm-process.js',
  'dist/main/vmm/machine/machine-thread.js',
  'dist/main/vmm/vcpu/ap-worker.js',
  'dist/native/kvm.js',
  'dist/renderer/index.html',
];
const REQUIRED_TARGETS = ['AppImage', 'deb', 'rpm'];

const failures = [];
const fail = (text) => failures.push(text);
const ok = (text) => console.log(`ok: ${text}`);

const { getConfig, validateConfiguration } = require('app-builder-lib/out/util/config/config');
const { readPackageJson, checkMetadata } = require('app-builder-lib/out/util/packageMetadata');
const { computeElectronVersion } = require('app-builder-lib/out/electron/electronVersion');
const { DebugLogger } = require('builder-util');
const { minimatch } = createRequire(require.resolve('app-builder-lib/package.json'))('minimatch');
const builderVersion = require('app-builder-lib/package.json').version;

async function main() {
  const packageFile = path.join(projectDir, 'package.json');
  const pkg = JSON.parse(fs.readFileSync(packageFile, 'utf8'));

  let config;
  try {
    config = await getConfig(projectDir, null, null);
    await validateConfiguration(config, new DebugLogger(false));
    ok(`electron-builder ${builderVersion} loads the config and its schema accepts it`);
  } catch (e) {
    fail(`electron-builder rejects the config: ${e.message.split('\n  How to fix')[0]}`);
    return;
  }

  try {
    const metadata = await readPackageJson(packageFile);
    checkMetadata(metadata, metadata, packageFile, packageFile);
    ok('package.json passes electron-builder\'s metadata checks');
  } catch (e) {
    fail(`package.json: ${e.message}`);
  }

  const declared = pkg.devDependencies?.electron;
  if (!declared) fail('package.json has no "electron" devDependency');
  if (config.electronVersion != null) {
    fail(`electronVersion is set in the config (${config.electronVersion}); leave it out so it follows package.json`);
  }
  const resolved = await computeElectronVersion(projectDir).catch((e) => { fail(`Electron version: ${e.message}`); return null; });
  if (resolved && declared) {
    if (declared.replace(/^[\^~=v]/, '') !== resolved) fail(`Electron ${resolved} is installed but package.json asks for ${declared}`);
    else ok(`Electron version ${resolved} comes from devDependencies`);
  }

  const linuxTargets = (config.linux?.target ?? []).map((t) => (typeof t === 'string' ? { target: t, arch: undefined } : t));
  const before = failures.length;
  for (const name of REQUIRED_TARGETS) {
    const t = linuxTargets.find((x) => x.target === name);
    const arch = t?.arch === undefined ? [] : [].concat(t.arch);
    if (!t) fail(`linux.target lacks ${name}`);
    else if (!arch.includes('x64')) fail(`linux.target ${name} is not built for x64`);
  }
  if (failures.length === before) ok(`linux targets: ${REQUIRED_TARGETS.join(', ')} for x64`);

  const debDepends = config.deb?.depends ?? [];
  const rpmDepends = config.rpm?.depends ?? [];
  if (debDepends.length === 0) fail('deb.depends is empty');
  if (rpmDepends.length === 0) fail('rpm.depends is empty');
  if (!debDepends.includes('seabios')) fail('deb.depends lacks seabios (firmware boot needs it)');
  if (!rpmDepends.includes('seabios-bin')) fail('rpm.depends lacks seabios-bin (firmware boot needs it)');
  if (debDepends.length && rpmDepends.length) ok(`deb declares ${debDepends.length} and rpm ${rpmDepends.length} runtime dependencies`);

  const patterns = (config.files ?? []).flatMap((f) => (typeof f === 'string' ? [f] : f.filter ?? []));
  const included = (file) => {
    let result = false;
    for (const p of patterns) {
      if (p.startsWith('!')) { if (minimatch(file, p.slice(1), { dot: true })) result = false; }
      else if (minimatch(file, p, { dot: true })) result = true;
    }
    return result;
  };
  const mainEntry = pkg.main ?? 'index.js';
  for (const file of new Set([mainEntry, ...RUNTIME_FILES])) {
    if (!included(file)) fail(`"files" does not include ${file}`);
  }
  if (included('dist/test/unit/api.test.js')) fail('"files" includes the tests');
  ok('"files" includes the main entry, preload, VM process, workers and renderer, and no tests');
  const missing = [mainEntry, ...RUNTIME_FILES].filter((f) => !fs.existsSync(path.join(projectDir, f)));
  if (missing.length === 0) ok('every runtime file exists in the build');
  else if (requireBuild) fail(`not built yet: ${missing.join(', ')}`);
  else console.log(`note: not checked (build first): ${missing.join(', ')}`);

  checkDebianNames(debDepends);
  console.log('note: this check cannot prove that the packages build (Electron and the packaging tools are downloads),');
  console.log('note: that the rpm dependency names exist in Fedora, or that the packaged app starts.');
}

/** Package names apt has a candidate version for (one apt-cache call), or null if apt is unusable. */
function aptKnownNames(names) {
  const r = spawnSync('apt-cache', ['policy', ...names], { encoding: 'utf8' });
  if (r.error || r.status !== 0) return null;
  const known = new Set();
  let current = null;
  for (const line of r.stdout.split('\n')) {
    const head = /^(\S+):$/.exec(line);
    if (head) current = head[1];
    else if (current && /^\s+Candidate: (?!\(none\))/.test(line)) known.add(current);
  }
  return known.size > 0 ? known : null;
}

function checkDebianNames(depends) {
  const alternatives = depends.map((d) => d.split('|').map((a) => a.trim().split(/\s|\(/)[0]));
  const known = aptKnownNames([...new Set([...alternatives.flat(), 'dpkg'])]);
  if (!known) {
    console.log('note: apt-cache is not usable here; deb dependency names not checked');
    return;
  }
  const unknown = depends.filter((_, i) => !alternatives[i].some((name) => known.has(name)));
  if (unknown.length) fail(`apt knows none of: ${unknown.join(', ')}`);
  else ok('apt knows every deb dependency (or one of its alternatives)');
}

main().then(() => {
  if (failures.length) {
    for (const f of failures) console.error(`packaging check failed: ${f}`);
    process.exit(1);
  }
  console.log('packaging config: ok');
}, (e) => {
  console.error(`packaging check failed: ${e.message}`);
  process.exit(1);
});
