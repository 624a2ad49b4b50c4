// Where the rig keeps its sources and its build output, on the host and inside L1.
import path from 'node:path';

/** The project checkout (this file compiles to dist/test/rig/paths.js). */
export const repoRoot = path.resolve(__dirname, '..', '..', '..');
export const rigSourceDir = path.join(repoRoot, 'test', 'rig');
export const rigBuildDir = path.join(repoRoot, 'build', 'rig');
/** Where L1 mounts the project (read-only, 9p). */
export const l1ProjectDir = '/project';

/** The same file seen from inside L1, for a path under the project. */
export function inL1(hostPath: string): string {
  const rel = path.relative(repoRoot, hostPath);
  if (rel.startsWith('..') || path.isAbsolute(rel)) throw new Error(`${hostPath} is outside the project, so L1 cannot see it`);
  return path.posix.join(l1ProjectDir, rel.split(path.sep).join('/'));
}
