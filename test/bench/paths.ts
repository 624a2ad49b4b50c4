// Where the benches find the project and write their results. Inside the rig's L1 the
// project is a read-only share, so the rig scenario points PORTHOLE_BENCH_DIR at a tmpfs.
import fs from 'node:fs';
import path from 'node:path';

/** The project checkout (this file compiles to dist/test/bench/paths.js). */
export const repoRoot = path.resolve(__dirname, '..', '..', '..');
export const guestsSrc = path.join(repoRoot, 'test', 'guests');

/** The directory for assembled bench guests and result files (created on first use). */
export function benchOutputDir(): string {
  const dir = process.env.PORTHOLE_BENCH_DIR || path.join(repoRoot, 'build', 'bench');
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/**
 * Writes a result file. In L1 the line `BENCH-JSON <name> <json>` also goes to stdout, where
 * the host side of the rig bench picks it up and saves the file under build/bench/.
 */
export function writeBenchResult(name: string, value: unknown): void {
  const text = JSON.stringify(value);
  fs.writeFileSync(path.join(benchOutputDir(), name), `${JSON.stringify(value, null, 2)}\n`);
  if (process.env.PORTHOLE_BENCH_FORWARD_RESULTS === '1') process.stdout.write(`BENCH-JSON ${name} ${text}\n`);
}

/**
 * Keeps what a failed guest said: its console transcript and its VMM's stderr, in a file of
 * PORTHOLE_BENCH_KEEP_DIR (in the rig, L1's share that lands in build/rig/out/ on the host),
 * else of the output directory. Returns the file's name for the failure line, or null.
 */
export function keepFailureTranscript(label: string, transcript: string, stderr: string): string | null {
  const dir = process.env.PORTHOLE_BENCH_KEEP_DIR || benchOutputDir();
  const file = path.join(dir, `failure-${new Date().toISOString().replace(/[:.]/g, '-')}-${label.replace(/[^\w-]+/g, '-')}.txt`);
  try {
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(file, `${label}\n\n--- console (last 64 KiB) ---\n${transcript.slice(-65536)}\n\n--- VMM stderr (last part) ---\n${stderr}\n`);
    return path.basename(file);
  } catch {
    return null;
  }
}
