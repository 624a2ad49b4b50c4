// scripts/check-packaging.mjs: passes on the project's electron-builder.yml and fails on
// broken copies of it (so the check can fail), without downloading anything.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { repoRoot } from '../helpers/vm';

const script = path.join(repoRoot, 'scripts', 'check-packaging.mjs');
const temps: string[] = [];
after(() => temps.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

function run(projectDir?: string): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [script, ...(projectDir ? ['--project', projectDir] : [])], { encoding: 'utf8', timeout: 120000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

/** A project copy whose electron-builder.yml (or package.json) is edited by `edit`. */
function brokenProject(editYml: (yml: string) => string, editPkg: (pkg: Record<string, unknown>) => void = () => undefined): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-pack-'));
  temps.push(dir);
  fs.writeFileSync(path.join(dir, 'electron-builder.yml'), editYml(fs.readFileSync(path.join(repoRoot, 'electron-builder.yml'), 'utf8')));
  const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as Record<string, unknown>;
  editPkg(pkg);
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify(pkg));
  fs.symlinkSync(path.join(repoRoot, 'node_modules'), path.join(dir, 'node_modules'));
  return dir;
}

test('the project\'s packaging config passes electron-builder\'s loader, schema and our checks', () => {
  const r = run();
  assert.equal(r.status, 0, r.out);
  assert.match(r.out, /schema accepts it/);
  assert.match(r.out, /Electron version \d+\.\d+\.\d+ comes from devDependencies/);
  assert.match(r.out, /AppImage, deb, rpm for x64/);
  assert.match(r.out, /cannot prove/);
});

test('options electron-builder does not know, or of the wrong type, are rejected by its schema', () => {
  const unknown = run(brokenProject((yml) => yml.replace(/^appId: /m, 'bogusOption: true\nappId: ')));
  assert.notEqual(unknown.status, 0);
  assert.match(unknown.out, /packaging check failed: electron-builder rejects the config: .*\n.*unknown property 'bogusOption'/);
  const wrongType = run(brokenProject((yml) => yml.replace(/^asar: false$/m, 'asar: maybe')));
  assert.notEqual(wrongType.status, 0);
  assert.match(wrongType.out, /electron-builder rejects the config: .*\n.*configuration\.asar/);
});

test('missing targets, dependencies or app files, a pinned Electron, or electron in dependencies fail the check', () => {
  const dir = brokenProject((yml) => yml
    .replace('    - target: rpm\n      arch: [x64]\n', '')
    .replace(/^rpm:\n {2}depends:\n( {4}- .*\n)+/m, 'rpm:\n  depends: []\n')
    .replace('    - seabios\n', '    - seabios\n    - libporthole-no-such-package\n')
    .replace('  - dist/preload/**/*.js\n', '')
    .concat('\nelectronVersion: 1.0.0\n'), (pkg) => {
    pkg.dependencies = { ...(pkg.dependencies as object), electron: '39.5.0' };
  });
  const r = run(dir);
  assert.notEqual(r.status, 0);
  for (const expected of [
    /linux.target lacks rpm/,
    /rpm.depends is empty/,
    /rpm.depends lacks seabios-bin/,
    /electronVersion is set/,
    /"files" does not include dist\/preload\/preload.js/,
    /only allowed in "devDependencies"/,
  ]) assert.match(r.out, expected);
  if (!/apt-cache is not usable/.test(r.out)) assert.match(r.out, /apt knows none of: libporthole-no-such-package/);
});
