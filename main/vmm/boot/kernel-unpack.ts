// A bzImage's kernel unpacked once on the host and kept in a cache, so that later boots enter
// the kernel's own ELF entry and skip the guest's decompressor (seconds on a slow or nested host;
// Firecracker boots vmlinux the same way). The first boot of a kernel uses the bzImage while the
// host unpacks it in the background. What the guest loses: the decompressor's KASLR.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';

/** How many unpacked kernels the cache keeps (each is the size of a vmlinux, 30 to 70 MB). */
export const KERNEL_CACHE_KEEP = 4;

export class KernelUnpackError extends Error {}

/** PORTHOLE_KERNEL_CACHE, else $XDG_CACHE_HOME/porthole/kernels, else ~/.cache/porthole/kernels. */
export function kernelCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.PORTHOLE_KERNEL_CACHE) return env.PORTHOLE_KERNEL_CACHE;
  const base = env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'porthole', 'kernels');
}

/** The cache file for this kernel file as it is now (a changed or replaced file gets a new one). */
export function unpackedPathOf(kernel: string, cacheDir: string): string {
  const real = fs.realpathSync(kernel);
  const st = fs.statSync(real);
  const key = createHash('sha256').update(`${real}\0${st.dev}\0${st.ino}\0${st.size}\0${st.mtimeMs}`).digest('hex').slice(0, 32);
  return path.join(cacheDir, `${key}.elf`);
}

const XZ_MAGIC = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];
const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC = [0x1f, 0x8b];

function startsWith(bytes: Uint8Array, magic: number[]): boolean {
  return magic.every((b, i) => bytes[i] === b);
}

/** The compressed payload of a 64-bit bzImage (boot protocol 2.08+: payload_offset and _length). */
export function bzImagePayload(image: Uint8Array, name: string): Uint8Array {
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const bad = (why: string) => new KernelUnpackError(`${name}: ${why}`);
  if (image.length < 0x268 || view.getUint32(0x202, true) !== 0x53726448) throw bad('not a bzImage');
  const protocol = view.getUint16(0x206, true);
  if (protocol < 0x20c || !(view.getUint16(0x236, true) & 1)) throw bad('not a 64-bit bzImage (boot protocol 2.12 with XLF_KERNEL_64)');
  const kernelAt = ((image[0x1f1] || 4) + 1) * 512;
  const offset = view.getUint32(0x248, true);
  const length = view.getUint32(0x24c, true);
  if (length === 0 || kernelAt + offset + length > image.length) throw bad('its payload lies outside the file');
  return image.subarray(kernelAt + offset, kernelAt + offset + length);
}

/** /usr/bin's tool before whatever PATH finds first (busybox's xz lacks the kernel's filters). */
function tool(name: string): string {
  const full = path.join('/usr/bin', name);
  return fs.existsSync(full) ? full : name;
}

function runFilter(command: string, args: string[], input: Uint8Array, background: boolean): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    if (background && child.pid !== undefined) {
      try { os.setPriority(child.pid, 19); } catch { /* best effort: it only yields the CPU */ }
    }
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => { err = (err + c).slice(-500); });
    child.on('error', (e: NodeJS.ErrnoException) => reject(new KernelUnpackError(e.code === 'ENOENT' ? `${path.basename(command)} is not installed` : `${command}: ${e.message}`)));
    child.on('close', (code) => {
      if (code === 0) resolve(Buffer.concat(out));
      else reject(new KernelUnpackError(`${path.basename(command)} failed (exit ${code}): ${err.trim()}`));
    });
    child.stdin.on('error', () => { /* the close handler reports the failure */ });
    child.stdin.end(input);
  });
}

/** The payload unpacked: gzip in-process, xz and zstd through their tools. Checks the result is a vmlinux. */
export async function unpackPayload(payload: Uint8Array, name: string, background = false): Promise<Buffer> {
  let out: Buffer;
  // Every format but gzip has the unpacked size appended (scripts/Makefile.lib size_append).
  const sizeAppended = () => new DataView(payload.buffer, payload.byteOffset + payload.length - 4, 4).getUint32(0, true);
  let expect: number | undefined;
  if (startsWith(payload, XZ_MAGIC)) {
    out = await runFilter(tool('xz'), ['-dc'], payload.subarray(0, payload.length - 4), background);
    expect = sizeAppended();
  } else if (startsWith(payload, ZSTD_MAGIC)) {
    out = await runFilter(tool('zstd'), ['-dc'], payload.subarray(0, payload.length - 4), background);
    expect = sizeAppended();
  } else if (startsWith(payload, GZIP_MAGIC)) {
    try {
      out = zlib.gunzipSync(payload);
    } catch (e) {
      throw new KernelUnpackError(`${name}: its gzip payload does not unpack: ${(e as Error).message}`);
    }
  } else {
    throw new KernelUnpackError(`${name}: its payload is compressed in a format Porthole does not unpack (only gzip, xz and zstd)`);
  }
  if (expect !== undefined && out.length !== expect) throw new KernelUnpackError(`${name}: unpacked to ${out.length} bytes, but the image says ${expect}`);
  // Loaded here, not at the top: the VM host only needs kernelForBoot, and linux.ts brings the PCI platform.
  (require('./linux') as typeof import('./linux')).parseElfKernel(out, `${name} (unpacked)`);
  return out;
}

/** Unpacks `kernel` into the cache (atomically) and returns the cache file; drops the oldest entries past KERNEL_CACHE_KEEP. */
export async function unpackKernelToCache(kernel: string, cacheDir: string, background = false): Promise<string> {
  const target = unpackedPathOf(kernel, cacheDir);
  const image = fs.readFileSync(kernel);
  const elf = await unpackPayload(bzImagePayload(image, kernel), kernel, background);
  fs.mkdirSync(cacheDir, { recursive: true });
  const tmp = `${target}.tmp-${process.pid}`;
  try {
    fs.writeFileSync(tmp, elf);
    fs.renameSync(tmp, target);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw new KernelUnpackError(`cannot write ${target}: ${(e as Error).message}`);
  }
  pruneCache(cacheDir, target);
  return target;
}

function pruneCache(cacheDir: string, keep: string): void {
  const now = Date.now();
  const entries = fs.readdirSync(cacheDir).flatMap((f) => {
    const p = path.join(cacheDir, f);
    try {
      const st = fs.statSync(p);
      // A leftover of a process that died mid-write (an hour is far beyond any unpack).
      if (f.includes('.tmp-') && now - st.mtimeMs > 3600_000) fs.rmSync(p, { force: true });
      return f.endsWith('.elf') ? [{ p, used: Math.max(st.atimeMs, st.mtimeMs) }] : [];
    } catch {
      return [];
    }
  });
  entries.sort((a, b) => b.used - a.used);
  for (const e of entries.slice(KERNEL_CACHE_KEEP)) if (e.p !== keep) fs.rmSync(e.p, { force: true });
}

export interface KernelChoice {
  /** The file to boot: the cached vmlinux, or the bzImage itself. */
  path: string;
  /** Why, for the VM log. */
  note: string;
}

/** The unpacker's entry: `node kernel-unpack-main.js KERNEL CACHEDIR`. */
export const KERNEL_UNPACK_ENTRY = path.join(__dirname, 'kernel-unpack-main.js');

/** Whether another process is unpacking into `target` now (its temporary file is fresh). */
function unpackUnderway(target: string): boolean {
  const dir = path.dirname(target);
  const prefix = `${path.basename(target)}.tmp-`;
  try {
    return fs.readdirSync(dir).some((f) => {
      if (!f.startsWith(prefix)) return false;
      const pid = Number(f.slice(prefix.length));
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    });
  } catch {
    return false;
  }
}

/**
 * The kernel to boot for `kernel`: its unpacked vmlinux from the cache if there is one, else the
 * file itself, and for a bzImage an unpack in a detached low-priority process (it outlives this
 * VM, whose first boot does not wait for it). A failed unpack leaves no cache entry: boots then
 * keep using the bzImage.
 */
export function kernelForBoot(kernel: string, cacheDir = kernelCacheDir()): KernelChoice {
  let target: string;
  const head = Buffer.alloc(0x268);
  try {
    target = unpackedPathOf(kernel, cacheDir);
    const fd = fs.openSync(kernel, 'r');
    try {
      fs.readSync(fd, head, 0, head.length, 0);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return { path: kernel, note: 'kernel: booted as given (it cannot be read for unpacking)' };
  }
  if (head.readUInt32LE(0x202) !== 0x53726448) return { path: kernel, note: 'kernel: not a bzImage, booted as given' };
  if (fs.existsSync(target)) {
    try {
      fs.utimesSync(target, new Date(), fs.statSync(target).mtime); // recently used: kept by the pruning
    } catch { /* a read-only cache still serves */ }
    return { path: target, note: `kernel: booting the unpacked kernel ${target} (the bzImage's decompressor and its KASLR are skipped)` };
  }
  if (unpackUnderway(target)) return { path: kernel, note: 'kernel: booting the bzImage; another process is unpacking it for the next boot' };
  try {
    fs.mkdirSync(cacheDir, { recursive: true });
    // Electron's binary runs the script as plain Node with ELECTRON_RUN_AS_NODE; Node ignores it.
    const child = spawn(process.execPath, [KERNEL_UNPACK_ENTRY, kernel, cacheDir], {
      detached: true, stdio: 'ignore', env: { ...process.env, ELECTRON_RUN_AS_NODE: '1' },
    });
    child.on('error', () => { /* the note below is all the VM log gets; boots keep the bzImage */ });
    child.unref();
    return { path: kernel, note: `kernel: booting the bzImage; unpacking it into ${cacheDir} in the background (pid ${child.pid}) for the next boot` };
  } catch (e) {
    return { path: kernel, note: `kernel: booting the bzImage (cannot unpack it ahead: ${(e as Error).message})` };
  }
}
