// A USB stick with a FAT filesystem and known files, beside the raw-pattern sticks: what a
// user's stick looks like, for tests that mount it in L1 or L2 and compare files.
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { stickSector } from './sticks';

export const FAT_STICK = { label: 'fatstick', sizeMiB: 32, serial: 'RIGFAT0', volumeLabel: 'PORTHOLE' };

/** The files on the FAT stick: path (forward slashes) to contents. */
export function fatStickFiles(): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  files.set('README.TXT', Buffer.from('Porthole rig FAT stick: every file here is known to the tests.\n'));
  // 1 MiB of the raw sticks' sector pattern, so a reader can check any part of it.
  const big = Buffer.alloc(1048576);
  for (let s = 0; s < big.length / 512; s++) stickSector('fatfile', s).copy(big, s * 512);
  files.set('DATA/PATTERN.BIN', big);
  files.set('DATA/EMPTY.TXT', Buffer.alloc(0));
  files.set('DATA/DEEP/NESTED.TXT', Buffer.from('nested three levels down\n'));
  return files;
}

/** SHA-256 of each known file, for checks in L1 or in a guest. */
export function fatStickDigests(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, data] of fatStickFiles()) out[name] = crypto.createHash('sha256').update(data).digest('hex');
  return out;
}

const FAT_VERSION = 1;

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) throw new Error(`${cmd} is needed for the rig's FAT stick (npm run fixtures installs dosfstools and mtools): ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${(r.stderr || r.stdout).trim()}`);
}

/** Writes the FAT stick image (mkfs.fat, then mtools copies the files in) unless it exists. */
export function ensureFatStickImage(dir: string): string {
  const file = path.join(dir, `${FAT_STICK.label}-v${FAT_VERSION}.img`);
  if (fs.existsSync(file)) return file;
  fs.mkdirSync(dir, { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  const src = fs.mkdtempSync(path.join(dir, '.fat-src-'));
  try {
    fs.writeFileSync(tmp, '');
    fs.truncateSync(tmp, FAT_STICK.sizeMiB * 1048576);
    // A fixed volume id keeps the image the same from run to run.
    run('mkfs.fat', ['-F', '16', '-n', FAT_STICK.volumeLabel, '-i', '504f5254', tmp]);
    const dirs = new Set<string>();
    for (const [name, data] of fatStickFiles()) {
      const parts = name.split('/');
      for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
      const local = path.join(src, name.replace(/\//g, '_'));
      fs.writeFileSync(local, data);
    }
    for (const d of [...dirs].sort()) run('mmd', ['-i', tmp, `::${d}`]);
    for (const name of fatStickFiles().keys()) run('mcopy', ['-i', tmp, path.join(src, name.replace(/\//g, '_')), `::${name}`]);
    fs.renameSync(tmp, file);
  } finally {
    fs.rmSync(src, { recursive: true, force: true });
    fs.rmSync(tmp, { force: true });
  }
  return file;
}
