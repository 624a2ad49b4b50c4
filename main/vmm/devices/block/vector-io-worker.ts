// One thread of the VectorIoPool: preadv/pwritev of one job at a time, straight between an
// image's descriptor and guest memory (SharedArrayBuffer views, shared, not copied, by
// postMessage). It never throws: every job ends with its slot's state set and a notify, so the
// waiting machine thread cannot hang on a job that failed.
import fs from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { VECTOR_IO_DONE, VECTOR_IO_FAILED, VECTOR_IO_READY, VECTOR_IO_WORKERS, type VectorIoJobMessage } from './vector-io-pool';

const { states: shared, index } = workerData as { states: SharedArrayBuffer; index: number };
const states = new Int32Array(shared);

parentPort?.on('message', (job: VectorIoJobMessage) => {
  let result = VECTOR_IO_FAILED;
  try {
    let rest = job.buffers;
    let length = 0;
    for (const b of rest) length += b.length;
    let moved = 0;
    while (moved < length) {
      const count = job.write ? fs.writevSync(job.fd, rest, job.position + moved) : fs.readvSync(job.fd, rest, job.position + moved);
      if (count === 0) break;
      moved += count;
      if (moved < length) rest = skip(rest, count);
    }
    if (moved === length) result = VECTOR_IO_DONE;
  } catch {
    // The caller does the job again on its own thread, which gives the error its message.
  }
  Atomics.store(states, job.slot, result);
  Atomics.notify(states, job.slot);
});

function skip(buffers: Uint8Array[], n: number): Uint8Array[] {
  let i = 0;
  while (i < buffers.length && n >= buffers[i].length) n -= buffers[i++].length;
  const rest = buffers.slice(i);
  if (rest.length > 0 && n > 0) rest[0] = rest[0].subarray(n);
  return rest;
}

Atomics.store(states, VECTOR_IO_WORKERS + index, VECTOR_IO_READY);
