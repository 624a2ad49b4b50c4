// A thread's name (its /proc comm), as the VMM's vCPU and I/O threads set it.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';

const libcModule = path.join(__dirname, '..', '..', 'native', 'libc.js');

/** Names a fresh worker thread and returns its comm as /proc shows it. */
function nameInWorker(name: string): Promise<string> {
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    const fs = require('node:fs');
    const libc = require(workerData.libcModule);
    libc.setThreadName(workerData.name);
    parentPort.postMessage(fs.readFileSync('/proc/thread-self/comm', 'utf8').trim());`;
  return new Promise((resolve, reject) => {
    const worker = new Worker(code, { eval: true, workerData: { libcModule, name } });
    worker.once('message', (comm: string) => { void worker.terminate(); resolve(comm); });
    worker.once('error', reject);
  });
}

test('a thread names itself for ps -L and top -H; a long name is cut to the kernel\'s 15 bytes, and the process keeps its own name', async () => {
  const before = fs.readFileSync('/proc/self/comm', 'utf8');
  assert.equal(await nameInWorker('disk-io'), 'disk-io');
  assert.equal(await nameInWorker('a-name-longer-than-fifteen'), 'a-name-longer-t');
  assert.equal(fs.readFileSync('/proc/self/comm', 'utf8'), before);
});
