// Debian package access for the rig image builder: resolve versions with apt-cache, fetch
// with apt-get download, and read files out of a .deb by streaming its tar (no extraction
// of the 400 MB module tree to disk).
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export class RigBuildError extends Error {}

function run(cmd: string, args: string[], opts: { cwd?: string } = {}): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { cwd: opts.cwd, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw new RigBuildError(`cannot run ${cmd}: ${(r.error as NodeJS.ErrnoException).code ?? r.error.message}`);
  return { status: r.status ?? 1, stdout: r.stdout, stderr: r.stderr };
}

/** The candidate version apt would install, or null when apt knows no such package. */
export function candidateVersion(pkg: string): string | null {
  const r = run('apt-cache', ['policy', pkg]);
  const m = /^\s*Candidate:\s*(\S+)/m.exec(r.stdout);
  if (!m || m[1] === '(none)') return null;
  return m[1];
}

/** Resolves a metapackage like linux-image-amd64 to the versioned package it depends on. */
export function metaDependency(meta: string, prefix: string): string | null {
  const r = run('apt-cache', ['depends', meta]);
  for (const line of r.stdout.split('\n')) {
    const m = /^\s*Depends:\s*(\S+)/.exec(line);
    if (m && m[1].startsWith(prefix)) return m[1];
  }
  return null;
}

/** Runs `apt-get update` once when apt has no package lists yet (a fresh machine). */
export function ensureAptLists(probe: string): void {
  if (candidateVersion(probe) !== null) return;
  if (process.getuid?.() !== 0) {
    throw new RigBuildError(`apt does not know package ${probe}: run "sudo apt-get update" first`);
  }
  const r = run('apt-get', ['update', '-qq']);
  if (r.status !== 0 || candidateVersion(probe) === null) {
    throw new RigBuildError(`apt-get update did not make package ${probe} available: ${r.stderr.trim().split('\n').pop() ?? ''}`);
  }
}

export function debVersion(file: string): string {
  const r = run('dpkg-deb', ['-f', file, 'Version']);
  if (r.status !== 0) throw new RigBuildError(`${file} is not a readable Debian package: ${r.stderr.trim()}`);
  return r.stdout.trim();
}

/** Returns the path of pkg=version in dir, downloading it with apt-get when absent. */
export function fetchDeb(pkg: string, version: string, dir: string): string {
  fs.mkdirSync(dir, { recursive: true });
  const find = (): string | null => {
    for (const f of fs.readdirSync(dir)) {
      if (f.startsWith(`${pkg}_`) && f.endsWith('.deb') && debVersion(path.join(dir, f)) === version) return path.join(dir, f);
    }
    return null;
  };
  const have = find();
  if (have) return have;
  const r = run('apt-get', ['download', '-q', `${pkg}=${version}`], { cwd: dir });
  const got = find();
  if (r.status !== 0 || !got) {
    throw new RigBuildError(`apt-get download ${pkg}=${version} failed: ${r.stderr.trim().split('\n').filter((l) => !l.startsWith('W:')).pop() ?? 'no file'}`);
  }
  return got;
}

export interface TarEntry {
  /** Path without the leading "./". */
  name: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  mode: number;
  linkName: string;
}

function cString(b: Buffer, start: number, len: number): string {
  const end = b.indexOf(0, start);
  return b.toString('utf8', start, end < 0 || end > start + len ? start + len : end);
}

function tarNumber(b: Buffer, start: number, len: number): number {
  if (b[start] & 0x80) {
    // GNU base-256 for sizes past 8 GiB; never expected here, but read it rather than misparse.
    let v = 0;
    for (let i = start + 1; i < start + len; i++) v = v * 256 + b[i];
    return v;
  }
  const s = cString(b, start, len).trim();
  return s ? parseInt(s, 8) : 0;
}

/** Streams the data tar of a .deb through readTar. */
export async function readDebTar(
  deb: string,
  want: (e: TarEntry) => boolean,
  onFile: (e: TarEntry, data: Buffer) => void,
): Promise<void> {
  const child = spawn('dpkg-deb', ['--fsys-tarfile', deb], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  const exited = new Promise<number>((resolve, reject) => {
    child.on('error', (e) => reject(new RigBuildError(`cannot run dpkg-deb: ${e.message}`)));
    child.on('close', (code) => resolve(code ?? 1));
  });
  let complete = false;
  try {
    complete = await readTar(child.stdout, deb, want, onFile);
  } finally {
    child.stdout.destroy();
  }
  const code = await exited;
  if (!complete && code !== 0) throw new RigBuildError(`dpkg-deb --fsys-tarfile ${deb} failed: ${stderr.trim()}`);
}

/**
 * Reads a tar stream. `want` sees every entry and says whether its contents are needed;
 * `onFile` then gets them whole. Handles ustar prefixes, GNU long names and pax path
 * records, which dpkg-deb may emit for long module paths. Resolves true when the stream
 * ended with tar's end-of-archive block.
 */
export async function readTar(
  stream: AsyncIterable<Buffer | string>,
  label: string,
  want: (e: TarEntry) => boolean,
  onFile: (e: TarEntry, data: Buffer) => void,
): Promise<boolean> {
  const source = stream[Symbol.asyncIterator]();
  let pending: Buffer = Buffer.alloc(0);
  let longName: string | null = null;
  let paxPath: string | null = null;
  async function need(n: number): Promise<boolean> {
    while (pending.length < n) {
      const next = await source.next();
      if (next.done) return false;
      const chunk = typeof next.value === 'string' ? Buffer.from(next.value, 'latin1') : next.value;
      pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    }
    return true;
  }
  async function skipOrRead(size: number, keep: boolean): Promise<Buffer | null> {
    const padded = Math.ceil(size / 512) * 512;
    const parts: Buffer[] = [];
    let consumed = 0;
    while (consumed < padded) {
      if (!(await need(1))) throw new RigBuildError(`${label}: tar stream ends inside an entry`);
      const n = Math.min(padded - consumed, pending.length);
      const dataPart = Math.max(0, Math.min(n, size - consumed));
      if (keep && dataPart > 0) parts.push(pending.subarray(0, dataPart));
      pending = pending.subarray(n);
      consumed += n;
    }
    return keep ? Buffer.concat(parts) : null;
  }

  for (;;) {
    if (!(await need(512))) return false;
    const h = pending.subarray(0, 512);
    pending = pending.subarray(512);
    if (h.every((x) => x === 0)) return true;
    const typeflag = String.fromCharCode(h[156] || 0x30);
    const size = tarNumber(h, 124, 12);
    if (typeflag === 'L') { longName = cString((await skipOrRead(size, true))!, 0, size); continue; }
    if (typeflag === 'x') {
      const rec = (await skipOrRead(size, true))!.toString('utf8');
      for (const m of rec.matchAll(/\d+ path=([^\n]*)\n/g)) paxPath = m[1];
      continue;
    }
    if (typeflag === 'g' || typeflag === 'K') { await skipOrRead(size, false); continue; }
    const prefix = cString(h, 345, 155);
    let name = paxPath ?? longName ?? (prefix ? `${prefix}/${cString(h, 0, 100)}` : cString(h, 0, 100));
    longName = null; paxPath = null;
    name = name.replace(/^\.\//, '').replace(/\/$/, '');
    const type = typeflag === '0' || typeflag === '7' ? 'file' : typeflag === '5' ? 'dir' : typeflag === '2' ? 'symlink' : 'other';
    const entry: TarEntry = { name, type, size, mode: tarNumber(h, 100, 8), linkName: cString(h, 157, 100) };
    const keep = want(entry) && type === 'file';
    // Links and directories carry no data whatever their size field says; other types may.
    const data = await skipOrRead(typeflag === '1' || type === 'symlink' || type === 'dir' ? 0 : size, keep);
    if (keep && data) onFile(entry, data);
  }
}

export interface ModInfo {
  name: string;
  depends: string[];
  /** Modules to load before this one (softdep pre:), which modprobe would also load. */
  softPre: string[];
}

/** Reads the .modinfo section of a kernel module (ELF64 little-endian). */
export function parseModInfo(ko: Buffer, fallbackName: string): ModInfo {
  if (ko.length < 64 || ko.readUInt32BE(0) !== 0x7f454c46 || ko[4] !== 2 || ko[5] !== 1) {
    throw new RigBuildError(`${fallbackName}: not an ELF64 little-endian module`);
  }
  const shoff = Number(ko.readBigUInt64LE(0x28));
  const shentsize = ko.readUInt16LE(0x3a);
  const shnum = ko.readUInt16LE(0x3c);
  const shstrndx = ko.readUInt16LE(0x3e);
  if (shoff + shnum * shentsize > ko.length || shstrndx >= shnum) throw new RigBuildError(`${fallbackName}: bad section table`);
  const sect = (i: number) => {
    const o = shoff + i * shentsize;
    return { name: ko.readUInt32LE(o), offset: Number(ko.readBigUInt64LE(o + 0x18)), size: Number(ko.readBigUInt64LE(o + 0x20)) };
  };
  const strtab = sect(shstrndx);
  const info: ModInfo = { name: fallbackName, depends: [], softPre: [] };
  for (let i = 0; i < shnum; i++) {
    const s = sect(i);
    if (cString(ko, strtab.offset + s.name, 64) !== '.modinfo') continue;
    for (const field of ko.toString('utf8', s.offset, s.offset + s.size).split('\0')) {
      const eq = field.indexOf('=');
      if (eq < 0) continue;
      const key = field.slice(0, eq);
      const value = field.slice(eq + 1);
      if (key === 'name') info.name = value;
      else if (key === 'depends') info.depends = value.split(',').filter(Boolean);
      else if (key === 'softdep') {
        const pre = /pre:\s*([^:]*?)(?:\s+post:|$)/.exec(value);
        if (pre) info.softPre.push(...pre[1].split(/\s+/).filter(Boolean));
      }
    }
  }
  return info;
}

/** Module names are matched with "-" and "_" treated alike, as modprobe does. */
export function moduleKey(name: string): string {
  return name.replace(/-/g, '_');
}

/**
 * Orders the dependency closure of `roots` so each module comes after everything it
 * needs (the order insmod must follow). Unknown names are errors unless built in.
 */
export function moduleClosure(roots: string[], infos: Map<string, ModInfo>, builtin: Set<string>): string[] {
  const order: string[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (raw: string, from: string | null, soft: boolean) => {
    const key = moduleKey(raw);
    if (state.get(key) === 'done' || state.get(key) === 'visiting') return;
    const info = infos.get(key);
    if (!info) {
      if (builtin.has(key) || soft) return;
      throw new RigBuildError(`module ${raw}${from ? ` (needed by ${from})` : ''} is neither in the kernel package nor built in`);
    }
    state.set(key, 'visiting');
    for (const d of info.softPre) visit(d, key, true);
    for (const d of info.depends) visit(d, key, false);
    state.set(key, 'done');
    order.push(key);
  };
  for (const r of roots) visit(r, null, false);
  return order;
}
