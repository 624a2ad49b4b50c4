// What the rig's test-events reporter sends for each test file run inside L1, and which
// files those are.
import fs from 'node:fs';
import path from 'node:path';

export interface ReportedTest {
  name: string;
  suite: boolean;
  ok: boolean;
  skip?: string;
  todo?: string;
  durationMs: number;
  error?: { message: string; stack?: string };
  children: ReportedTest[];
}

export interface ReportedFile {
  file: string;
  tests: ReportedTest[];
}

/** The test files of the named groups (dist/test/<group>), relative to the project. */
export function kvmTestFiles(projectDir: string, groups: string[]): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    let entries: string[] = [];
    try { entries = fs.readdirSync(dir); } catch { return; }
    for (const e of entries.sort()) {
      const p = path.join(dir, e);
      if (fs.statSync(p).isDirectory()) walk(p);
      else if (e.endsWith('.test.js')) out.push(path.relative(projectDir, p));
    }
  };
  for (const g of groups) walk(path.join(projectDir, 'dist', 'test', g));
  return out;
}
