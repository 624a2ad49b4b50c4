// Validators for the CD-ROM calls (insertCdrom, ejectCdrom), shared by the API and the monitor
// socket. Pure: no Node or DOM imports. Whether the ISO exists is checked in main.
import { ApiError, LIMITS, type CdromEjectSpec, type CdromInsertSpec } from './contract';

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Why `v` is not an ISO path, or null. */
export function isoPathProblem(v: unknown): string | null {
  if (typeof v !== 'string' || v === '') return 'The ISO image needs a file path.';
  if (v.length > LIMITS.pathMaxLength) return `The ISO image path must be at most ${LIMITS.pathMaxLength} characters.`;
  if (/[\0\r\n]/.test(v)) return 'The ISO image path must not contain NUL or line breaks.';
  if (!v.startsWith('/')) return `The ISO image path must be absolute (starting with /), not "${v}".`;
  return null;
}

function driveOf(v: unknown): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string' || v === '' || v.length > 64 || /[\u0000-\u001f\u007f]/.test(v)) {
    throw new ApiError('invalid-argument', 'The drive must be a CD-ROM drive\'s name, such as "disk1" (see listCdromDrives).');
  }
  return v;
}

function forceOf(v: unknown): boolean | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw new ApiError('invalid-argument', '"force" must be true or false.');
  return v;
}

function only(r: Record<string, unknown>, keys: string[], what: string): void {
  for (const k of Object.keys(r)) if (!keys.includes(k)) throw new ApiError('invalid-argument', `"${k}" is not a setting of ${what} (${keys.join(', ')}).`);
}

export function parseCdromInsertSpec(input: unknown): CdromInsertSpec {
  if (!isRecord(input)) throw new ApiError('invalid-argument', 'The media to insert must be an object like { "path": "/images/debian.iso" }.');
  only(input, ['path', 'drive', 'force'], 'a CD-ROM insert');
  const why = isoPathProblem(input.path);
  if (why) throw new ApiError('invalid-argument', why);
  const drive = driveOf(input.drive);
  const force = forceOf(input.force);
  return { path: input.path as string, ...(drive === undefined ? {} : { drive }), ...(force === undefined ? {} : { force }) };
}

export function parseCdromEjectSpec(input: unknown): CdromEjectSpec {
  if (input === undefined || input === null) return {};
  if (!isRecord(input)) throw new ApiError('invalid-argument', 'The eject options must be an object like { "drive": "disk1", "force": false }.');
  only(input, ['drive', 'force'], 'a CD-ROM eject');
  const drive = driveOf(input.drive);
  const force = forceOf(input.force);
  return { ...(drive === undefined ? {} : { drive }), ...(force === undefined ? {} : { force }) };
}
