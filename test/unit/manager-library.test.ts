// The VM library on disk: one versioned JSON file per VM, validated on load, written
// atomically; a temporary XDG_CONFIG_HOME per test.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import { configDir, libraryDir, recordFromJson, VmLibrary, type VmRecord } from '../../main/manager/library';
import { flatSpec, tempConfigHome } from '../helpers/manager';

let home: ReturnType<typeof tempConfigHome>;
beforeEach(() => { home = tempConfigHome(); });
afterEach(() => home.cleanup());

function record(id: string, name = id): VmRecord {
  const t = '2026-01-02T03:04:05.000Z';
  return { version: 1, id, createdAt: t, updatedAt: t, spec: flatSpec('echo', { name }) };
}

test('the library lives under $XDG_CONFIG_HOME/porthole/vms, or ~/.config when XDG_CONFIG_HOME is unset or relative', () => {
  assert.equal(libraryDir({ XDG_CONFIG_HOME: home.home }), path.join(home.home, 'porthole', 'vms'));
  assert.equal(configDir({ HOME: '/home/u' }), '/home/u/.config/porthole');
  assert.equal(configDir({ HOME: '/home/u', XDG_CONFIG_HOME: 'relative/dir' }), '/home/u/.config/porthole');
});

test('save then load round-trips; the directory is created private', () => {
  const lib = new VmLibrary(libraryDir({ XDG_CONFIG_HOME: home.home }));
  assert.deepEqual(lib.load(), { records: [], problems: [] });
  assert.equal(fs.statSync(lib.dir).mode & 0o777, 0o700);
  lib.save(record('b-vm'));
  lib.save(record('a-vm'));
  const text = fs.readFileSync(lib.fileOf('a-vm'), 'utf8');
  assert.equal((JSON.parse(text) as { version: number }).version, 1);
  assert.equal(fs.statSync(lib.fileOf('a-vm')).mode & 0o777, 0o600);
  assert.deepEqual(new VmLibrary(lib.dir).load(), { records: [record('a-vm'), record('b-vm')], problems: [] });
  lib.save({ ...record('a-vm', 'renamed') });
  assert.equal(new VmLibrary(lib.dir).load().records[0].spec.name, 'renamed');
  assert.deepEqual(fs.readdirSync(lib.dir).sort(), ['a-vm.json', 'b-vm.json'], 'no temp files are left behind');
  lib.remove('a-vm');
  assert.deepEqual(new VmLibrary(lib.dir).load().records.map((r) => r.id), ['b-vm']);
});

test('a bad file is reported by name and reason and skipped; the others load', () => {
  const lib = new VmLibrary(home.libraryDir);
  lib.load();
  lib.save(record('good'));
  const put = (name: string, content: string) => fs.writeFileSync(path.join(lib.dir, name), content);
  put('truncated.json', '{"version": 1, "id": "trunc');
  put('array.json', '[]');
  put('noversion.json', JSON.stringify({ ...record('noversion'), version: undefined }));
  put('v2.json', JSON.stringify({ ...record('v2'), version: 2 }));
  put('wrongid.json', JSON.stringify(record('other')));
  put('badspec.json', JSON.stringify({ ...record('badspec'), spec: { ...record('badspec').spec, cpus: 0 } }));
  put('extra.json', JSON.stringify({ ...record('extra'), owner: 'me' }));
  put('badtime.json', JSON.stringify({ ...record('badtime'), createdAt: 'yesterday' }));
  put('Bad Name.json', JSON.stringify(record('bad')));
  fs.mkdirSync(path.join(lib.dir, 'dir.json'));
  fs.symlinkSync('/etc/passwd', path.join(lib.dir, 'link.json'));
  put('notes.txt', 'ignored: not a .json file');
  put('.good.json.77.abcd.tmp', '{"half": ');
  const { records, problems } = new VmLibrary(lib.dir).load();
  assert.deepEqual(records.map((r) => r.id), ['good']);
  const reasons = Object.fromEntries(problems.map((p) => [p.file, p.reason]));
  assert.deepEqual(Object.keys(reasons).sort(), [
    'Bad Name.json', 'array.json', 'badspec.json', 'badtime.json', 'dir.json', 'extra.json', 'link.json', 'noversion.json', 'truncated.json', 'v2.json', 'wrongid.json',
  ]);
  assert.match(reasons['truncated.json'], /^it is not valid JSON/);
  assert.equal(reasons['array.json'], 'the file is not a JSON object');
  assert.equal(reasons['noversion.json'], 'the file has no "version" field');
  assert.equal(reasons['v2.json'], 'version 2 is not supported (this Porthole reads version 1)');
  assert.equal(reasons['wrongid.json'], 'its id "other" does not match the file name');
  assert.equal(reasons['badspec.json'], 'vCPUs must be a whole number from 1 to 64');
  assert.equal(reasons['extra.json'], 'unknown field "owner"');
  assert.match(reasons['Bad Name.json'], /not a VM id/);
  assert.equal(reasons['link.json'], 'it is not a regular file');
});

test('a crash mid-write leaves the old file intact and a temp file that loading ignores', () => {
  const lib = new VmLibrary(home.libraryDir);
  lib.load();
  lib.save(record('vm1', 'before'));
  // What a crash between write and rename leaves: a partial dot-named temp file.
  fs.writeFileSync(path.join(lib.dir, `.vm1.json.${process.pid}.dead.tmp`), '{"version":1,"id":"vm1","spec":{"na');
  const loaded = new VmLibrary(lib.dir).load();
  assert.deepEqual(loaded.problems, []);
  assert.equal(loaded.records[0].spec.name, 'before');
  lib.save(record('vm1', 'after'));
  assert.equal(new VmLibrary(lib.dir).load().records[0].spec.name, 'after');
});

test('a failed write reports a sentence and leaves the old file and no temp file', () => {
  const lib = new VmLibrary(home.libraryDir);
  lib.load();
  lib.save(record('vm1', 'before'));
  fs.mkdirSync(path.join(lib.dir, 'vm2.json')); // rename onto a directory fails
  assert.throws(() => lib.save(record('vm2')), (e: Error & { code?: string }) => e.code === 'io' && /^Could not save the VM settings to .*vm2\.json \(EISDIR\)\.$/.test(e.message));
  assert.deepEqual(fs.readdirSync(lib.dir).sort(), ['vm1.json', 'vm2.json']);
});

test('ids from outside cannot name files outside the library', () => {
  const lib = new VmLibrary(home.libraryDir);
  for (const id of ['../x', '..', 'a/b', '/etc/passwd', '', 'A', 'a.json', 'a\0b']) {
    assert.throws(() => lib.fileOf(id), { code: 'invalid-argument' }, id);
    assert.throws(() => lib.remove(id), { code: 'invalid-argument' }, id);
  }
  const ids = new Set(Array.from({ length: 50 }, () => lib.newId()));
  assert.equal(ids.size, 50);
  for (const id of ids) assert.match(id, /^[a-z0-9][a-z0-9-]{0,63}$/);
});

test('recordFromJson returns a clean copy of the spec', () => {
  const r = recordFromJson(JSON.parse(JSON.stringify(record('x'))), 'x');
  assert.ok(typeof r !== 'string');
  assert.deepEqual(r, record('x'));
});
