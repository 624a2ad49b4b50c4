// Runs a test/helpers/thread-roles.ts role on a worker thread and resolves with its result.
// A role that has not answered within `deadlineMs` is terminated and the promise rejects
// naming it: a lost wake-up then fails its test instead of holding the test process forever.
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { ThreadRole } from './thread-roles';

export const THREAD_DEADLINE_MS = 120_000;

export function runOnThread<T>(role: ThreadRole, deadlineMs = THREAD_DEADLINE_MS): Promise<T> {
  const worker = new Worker(path.join(__dirname, 'thread-roles.js'), { workerData: role });
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      void worker.terminate();
      reject(new Error(`thread role ${role.role} did not finish within ${deadlineMs} ms (a lost wake-up?)`));
    }, deadlineMs);
    worker.once('message', (m: T & { error?: string }) => {
      clearTimeout(timer);
      void worker.terminate();
      if (m.error) reject(new Error(m.error));
      else resolve(m);
    });
    worker.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}
