// The VM library: one JSON file per VM under $XDG_CONFIG_HOME/porthole/vms/. Files are
// versioned and validated on load (a bad file is reported and skipped, the others load)
// and written atomically: temp file in the same directory, fsync, rename, fsync the
// directory. A crash mid-write leaves either the old or the new file, plus at worst a
// dot-named temp file that loading ignores.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ApiError, VM_ID_PATTERN, type LibraryProblem, type VmSpec } from '../api/contract';
import { parseVmSpec, vmSpecProblems } from '../api/schema';

export const LIBRARY_FORMAT_VERSION = 1;

/** What one library file holds. */
export interface VmRecord {
  version: typeof LIBRARY_FORMAT_VERSION;
  id: string;
  createdAt: string;
  updatedAt: string;
  spec: VmSpec;
}

/** $XDG_CONFIG_HOME/porthole (a relative XDG_CONFIG_HOME is ignored, as the XDG spec says). */
export function configDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_CONFIG_HOME;
  const base = xdg && path.isAbsolute(xdg) ? xdg : path.join(env.HOME || os.homedir(), '.config');
  return path.join(base, 'porthole');
}

export function libraryDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(configDir(env), 'vms');
}

const MAX_FILE_BYTES = 1024 * 1024;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isIsoTime(v: unknown): v is string {
  return typeof v === 'string' && v.length <= 40 && !Number.isNaN(Date.parse(v));
}

/** Validates a parsed library file; returns the record or a reason sentence. */
export function recordFromJson(input: unknown, expectedId: string): VmRecord | string {
  if (!isRecord(input)) return 'the file is not a JSON object';
  if (input.version !== LIBRARY_FORMAT_VERSION) {
    return input.version === undefined
      ? 'the file has no "version" field'
      : `version ${JSON.stringify(input.version)} is not supported (this Porthole reads version ${LIBRARY_FORMAT_VERSION})`;
  }
  for (const k of Object.keys(input)) {
    if (!['version', 'id', 'createdAt', 'updatedAt', 'spec'].includes(k)) return `unknown field "${k}"`;
  }
  if (input.id !== expectedId) return `its id ${JSON.stringify(input.id)} does not match the file name`;
  if (!isIsoTime(input.createdAt) || !isIsoTime(input.updatedAt)) return 'createdAt and updatedAt must be ISO 8601 times';
  const problems = vmSpecProblems(input.spec);
  if (problems.length > 0) return problems[0].message.replace(/\.$/, '');
  return {
    version: LIBRARY_FORMAT_VERSION, id: expectedId, createdAt: input.createdAt, updatedAt: input.updatedAt, spec: parseVmSpec(input.spec),
  };
}

function ioError(action: string, e: unknown): ApiError {
  const code = (e as NodeJS.ErrnoException).code;
  return new ApiError('io', `Could not ${action}${code ? ` (${code})` : ''}.`);
}

export class VmLibrary {
  constructor(readonly dir: string) {}

  /** Every valid VM file, and a problem for each file that is not. Creates the directory. */
  load(): { records: VmRecord[]; problems: LibraryProblem[] } {
    try {
      fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    } catch (e) {
      throw ioError(`create the VM library folder ${this.dir}`, e);
    }
    let names: string[];
    try {
      names = fs.readdirSync(this.dir);
    } catch (e) {
      throw ioError(`read the VM library folder ${this.dir}`, e);
    }
    const records: VmRecord[] = [];
    const problems: LibraryProblem[] = [];
    for (const file of names.sort()) {
      if (file.startsWith('.') || !file.endsWith('.json')) continue;
      const id = file.slice(0, -'.json'.length);
      const result = this.loadFile(file, id);
      if (typeof result === 'string') problems.push({ file, reason: result });
      else records.push(result);
    }
    return { records, problems };
  }

  private loadFile(file: string, id: string): VmRecord | string {
    if (!VM_ID_PATTERN.test(id)) return 'the file name is not a VM id (lower-case letters, digits and dashes)';
    const full = path.join(this.dir, file);
    let text: string;
    try {
      const st = fs.lstatSync(full);
      if (!st.isFile()) return 'it is not a regular file';
      if (st.size > MAX_FILE_BYTES) return `it is larger than ${MAX_FILE_BYTES} bytes`;
      text = fs.readFileSync(full, 'utf8');
    } catch (e) {
      return `it cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`;
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      return `it is not valid JSON: ${(e as Error).message}`;
    }
    return recordFromJson(json, id);
  }

  /** A fresh id that no file uses. */
  newId(): string {
    for (;;) {
      const id = crypto.randomBytes(6).toString('hex');
      if (!fs.existsSync(this.fileOf(id))) return id;
    }
  }

  fileOf(id: string): string {
    if (!VM_ID_PATTERN.test(id)) throw new ApiError('invalid-argument', 'That is not a VM id.');
    return path.join(this.dir, `${id}.json`);
  }

  /** Writes the record atomically. */
  save(record: VmRecord): void {
    const target = this.fileOf(record.id);
    const temp = path.join(this.dir, `.${record.id}.json.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`);
    const text = `${JSON.stringify(record, null, 2)}\n`;
    let fd: number | null = null;
    try {
      fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      fd = fs.openSync(temp, 'wx', 0o600);
      fs.writeFileSync(fd, text);
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      fd = null;
      fs.renameSync(temp, target);
      this.syncDir();
    } catch (e) {
      if (fd !== null) fs.closeSync(fd);
      fs.rmSync(temp, { force: true });
      throw ioError(`save the VM settings to ${target}`, e);
    }
  }

  remove(id: string): void {
    const target = this.fileOf(id);
    try {
      fs.rmSync(target, { force: true });
      this.syncDir();
    } catch (e) {
      throw ioError(`delete ${target}`, e);
    }
  }

  private syncDir(): void {
    const dirFd = fs.openSync(this.dir, 'r');
    try {
      fs.fsyncSync(dirFd);
    } finally {
      fs.closeSync(dirFd);
    }
  }
}
