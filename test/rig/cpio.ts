// A writer for the "newc" cpio format the kernel unpacks as an initramfs.
import zlib from 'node:zlib';

export type CpioEntry =
  | { kind: 'dir'; path: string; mode?: number }
  | { kind: 'file'; path: string; data: Buffer; mode?: number }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'chardev'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function hex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, '0');
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

/** Builds the archive. Timestamps are zero so equal inputs give identical bytes. */
export function buildCpio(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const seen = new Set<string>();
  const push = (name: string, mode: number, data: Buffer, rdev: [number, number] = [0, 0]) => {
    const nameBytes = Buffer.from(`${name}\0`, 'utf8');
    const header =
      '070701' + hex8(ino++) + hex8(mode) + hex8(0) + hex8(0) + hex8(1) + hex8(0) + hex8(data.length) +
      hex8(0) + hex8(0) + hex8(rdev[0]) + hex8(rdev[1]) + hex8(nameBytes.length) + hex8(0);
    parts.push(Buffer.from(header, 'ascii'), nameBytes, Buffer.alloc(pad4(110 + nameBytes.length)));
    parts.push(data, Buffer.alloc(pad4(data.length)));
  };
  for (const e of entries) {
    const name = e.path.replace(/^\/+/, '');
    if (!name || name.includes('..')) throw new Error(`cpio: bad path ${e.path}`);
    if (seen.has(name)) throw new Error(`cpio: ${name} appears twice`);
    seen.add(name);
    switch (e.kind) {
      case 'dir': push(name, S_IFDIR | (e.mode ?? 0o755), Buffer.alloc(0)); break;
      case 'file': push(name, S_IFREG | (e.mode ?? 0o644), e.data); break;
      case 'symlink': push(name, S_IFLNK | 0o777, Buffer.from(e.target, 'utf8')); break;
      case 'chardev': push(name, S_IFCHR | (e.mode ?? 0o600), Buffer.alloc(0), [e.major, e.minor]); break;
    }
  }
  push('TRAILER!!!', 0, Buffer.alloc(0));
  return Buffer.concat(parts);
}

export function buildCpioGz(entries: CpioEntry[]): Buffer {
  return zlib.gzipSync(buildCpio(entries), { level: 6 });
}

/** Adds the parent directories of every path that are not listed yet, parents first. */
export function withParents(entries: CpioEntry[]): CpioEntry[] {
  const have = new Set(entries.map((e) => e.path.replace(/^\/+/, '')));
  const out: CpioEntry[] = [];
  for (const e of entries) {
    const segs = e.path.replace(/^\/+/, '').split('/');
    for (let i = 1; i < segs.length; i++) {
      const dir = segs.slice(0, i).join('/');
      if (!have.has(dir)) { have.add(dir); out.push({ kind: 'dir', path: dir }); }
    }
    out.push(e);
  }
  return out;
}
