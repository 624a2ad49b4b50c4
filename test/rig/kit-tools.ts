// Debian tools for the L2 kit where busybox has none: lsusb (usbutils) and aplay
// (alsa-utils), with the shared libraries they load, found through each ELF file's
// DT_NEEDED entries, and ALSA's configuration. The kit has no libc of its own otherwise.
import path from 'node:path';
import type { CpioEntry } from './cpio';
import { RigBuildError, candidateVersion, fetchDeb, readDebTar } from './deb';

/** The packages the tools and their libraries come from. */
export const KIT_TOOL_PACKAGES = ['usbutils', 'alsa-utils', 'libc6', 'libudev1', 'libusb-1.0-0', 'libasound2', 'libasound2-data'];
/** The tools, as paths inside their packages. */
export const KIT_TOOLS = ['usr/bin/lsusb', 'usr/bin/aplay'];

const LIB_DIRS = ['lib/x86_64-linux-gnu', 'usr/lib/x86_64-linux-gnu'];
const INTERPRETER = 'lib64/ld-linux-x86-64.so.2';

export function kitToolVersions(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of KIT_TOOL_PACKAGES) {
    const v = candidateVersion(p);
    if (!v) throw new RigBuildError(`apt has no candidate for ${p} (the kit's tools need it)`);
    out[p] = v;
  }
  return out;
}

/** The DT_NEEDED sonames of a 64-bit little-endian ELF file ([] for anything else). */
export function elfNeeded(elf: Buffer): string[] {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) return [];
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  const loads: { vaddr: number; offset: number; filesz: number }[] = [];
  let dyn: { offset: number; size: number } | null = null;
  for (let i = 0; i < phnum; i++) {
    const p = phoff + i * phentsize;
    if (p + 56 > elf.length) return [];
    const type = elf.readUInt32LE(p);
    const offset = Number(elf.readBigUInt64LE(p + 8));
    const vaddr = Number(elf.readBigUInt64LE(p + 16));
    const filesz = Number(elf.readBigUInt64LE(p + 32));
    if (type === 1) loads.push({ vaddr, offset, filesz });
    if (type === 2) dyn = { offset, size: filesz };
  }
  if (!dyn) return [];
  const needed: number[] = [];
  let strtab = -1;
  for (let p = dyn.offset; p + 16 <= Math.min(elf.length, dyn.offset + dyn.size); p += 16) {
    const tag = Number(elf.readBigInt64LE(p));
    const val = Number(elf.readBigUInt64LE(p + 8));
    if (tag === 0) break;
    if (tag === 1) needed.push(val);
    if (tag === 5) strtab = val;
  }
  const seg = loads.find((l) => strtab >= l.vaddr && strtab < l.vaddr + l.filesz);
  if (!seg) return [];
  const base = strtab - seg.vaddr + seg.offset;
  return needed.map((off) => {
    const start = base + off;
    const end = elf.indexOf(0, start);
    return elf.toString('utf8', start, end < 0 ? start : end);
  });
}

/** The kit's tool files: the tools, the libraries they need (with their symlinks), ALSA's data. */
export async function kitToolEntries(versions: Record<string, string>, debDir: string): Promise<{ entries: CpioEntry[]; debs: string[] }> {
  const files = new Map<string, Buffer>();
  const links = new Map<string, string>();
  const debs: string[] = [];
  for (const pkg of KIT_TOOL_PACKAGES) {
    const deb = fetchDeb(pkg, versions[pkg], debDir);
    debs.push(deb);
    await readDebTar(deb, (e) => {
      const wanted = KIT_TOOLS.includes(e.name) || e.name === INTERPRETER || e.name.startsWith('usr/share/alsa/') ||
        LIB_DIRS.some((d) => e.name.startsWith(`${d}/`) && /\.so(\.|$)/.test(e.name));
      if (!wanted) return false;
      if (e.type === 'symlink') { links.set(e.name, e.linkName); return false; }
      return e.type === 'file';
    }, (e, data) => { files.set(e.name, data); });
  }
  const entries: CpioEntry[] = [];
  const added = new Set<string>();
  const resolveLink = (p: string): string => {
    for (let i = 0; i < 10 && links.has(p); i++) {
      const t = links.get(p)!;
      p = t.startsWith('/') ? t.slice(1) : path.posix.normalize(path.posix.join(path.posix.dirname(p), t));
    }
    return p;
  };
  const addPath = (p: string) => {
    if (added.has(p)) return;
    added.add(p);
    if (links.has(p)) {
      entries.push({ kind: 'symlink', path: p, target: links.get(p)! });
      addPath(resolveLink(p));
      return;
    }
    const data = files.get(p);
    if (!data) throw new RigBuildError(`the kit's tools need ${p}, which none of ${KIT_TOOL_PACKAGES.join(', ')} has`);
    const elf = data.length > 4 && data.readUInt32BE(0) === 0x7f454c46;
    entries.push({ kind: 'file', path: p, data, mode: elf ? 0o755 : 0o644 });
    for (const soname of elfNeeded(data)) {
      const found = LIB_DIRS.map((d) => `${d}/${soname}`).find((c) => files.has(c) || links.has(c));
      if (!found) throw new RigBuildError(`${p} needs ${soname}, which none of ${KIT_TOOL_PACKAGES.join(', ')} has`);
      addPath(found);
    }
  };
  for (const tool of KIT_TOOLS) addPath(tool);
  addPath(INTERPRETER);
  for (const p of files.keys()) if (p.startsWith('usr/share/alsa/')) addPath(p);
  return { entries, debs };
}
