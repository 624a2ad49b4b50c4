// Runs a test/helpers/thread-roles.ts role on a worker thread and resolves with its result.
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { ThreadRole } from './thread-roles';

export function runOnThread<T>(role: ThreadRole): Promise<T> {
  const worker = new Worker(path.join(__dirname, 'thread-roles.js'), { workerData: role });
  return new Promise<T>((resolve, reject) => {
    worker.once('message', (m: T & { error?: string }) => {
      void worker.terminate();
      if (m.error) reject(new Error(m.error));
      else resolve(m);
    });
    worker.once('error', reject);
  });
}
