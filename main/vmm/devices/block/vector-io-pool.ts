// Several preadv/pwritev at once for a synchronous image (RawImageFile's vectorBatchNow): the
// requests a guest queued together (Linux splits a 1 MiB O_DIRECT write into two virtio-blk
// requests when its pages need more segments than seg_max) run in parallel, one on the calling
// thread and the rest on worker threads, and the call returns when all are done. The caller
// keeps its synchronous model (the machine thread is outside KVM_RUN anyway while it handles
// the notify); what changes is that the requests no longer wait for each other.
import path from 'node:path';
import { Worker } from 'node:worker_threads';

export const VECTOR_IO_PENDING = 0;
export const VECTOR_IO_DONE = 1;
export const VECTOR_IO_FAILED = 2;
/** A worker's ready word (after its slot's): set once it listens, so no job waits for a thread to start. */
export const VECTOR_IO_READY = 1;
/**
 * Smaller jobs run on the calling thread: handing one to a worker (a message, a wake-up, a
 * notify back) costs more than a few pages of page-cache copy.
 */
export const VECTOR_IO_PARALLEL_MIN_BYTES = 128 * 1024;
/** Worker threads per pool: the caller does one job itself, so up to this + 1 run at once. */
export const VECTOR_IO_WORKERS = 3;

export interface VectorIoJobMessage {
  slot: number;
  fd: number;
  write: boolean;
  position: number;
  /** Views of SharedArrayBuffers (guest memory): shared with the worker, not copied. */
  buffers: Uint8Array[];
}

export interface VectorIoJob {
  write: boolean;
  position: number;
  buffers: Uint8Array[];
}

export class VectorIoPool {
  /** Word i: worker i's job state; word VECTOR_IO_WORKERS + i: its ready flag. */
  private readonly states = new Int32Array(new SharedArrayBuffer(8 * VECTOR_IO_WORKERS));
  private workers: Worker[] | null = null;
  /** Jobs a worker did (for tests and statistics). */
  workerJobs = 0;

  /** True when the job's buffers can go to a worker (views of shared memory only). */
  static shareable(job: VectorIoJob): boolean {
    let bytes = 0;
    for (const b of job.buffers) {
      if (!(b.buffer instanceof SharedArrayBuffer)) return false;
      bytes += b.length;
    }
    return bytes >= VECTOR_IO_PARALLEL_MIN_BYTES;
  }

  /**
   * Runs `jobs` on `fd` at once; `here` does one job on this thread (and again any job a
   * worker could not finish, which gives its error a message). Returns each job's error.
   */
  run(fd: number, jobs: readonly VectorIoJob[], here: (job: VectorIoJob) => Error | null): (Error | null)[] {
    const results: (Error | null)[] = new Array(jobs.length).fill(null);
    for (let start = 0; start < jobs.length; start += VECTOR_IO_WORKERS + 1) {
      const end = Math.min(jobs.length, start + VECTOR_IO_WORKERS + 1);
      const sent: number[] = [];
      const workers = this.pool();
      for (let i = start + 1; i < end; i++) {
        const slot = sent.length;
        if (!VectorIoPool.shareable(jobs[i]) || Atomics.load(this.states, VECTOR_IO_WORKERS + slot) !== VECTOR_IO_READY) continue;
        Atomics.store(this.states, slot, VECTOR_IO_PENDING);
        const message: VectorIoJobMessage = { slot, fd, write: jobs[i].write, position: jobs[i].position, buffers: jobs[i].buffers };
        workers[slot].postMessage(message);
        sent.push(i);
        this.workerJobs++;
      }
      results[start] = here(jobs[start]);
      for (let i = start + 1; i < end; i++) if (!sent.includes(i)) results[i] = here(jobs[i]);
      sent.forEach((i, slot) => {
        while (Atomics.load(this.states, slot) === VECTOR_IO_PENDING) Atomics.wait(this.states, slot, VECTOR_IO_PENDING);
        if (Atomics.load(this.states, slot) !== VECTOR_IO_DONE) results[i] = here(jobs[i]);
      });
    }
    return results;
  }

  close(): void {
    for (const w of this.workers ?? []) void w.terminate();
    this.workers = null;
  }

  private pool(): Worker[] {
    if (!this.workers) {
      this.workers = [];
      for (let i = 0; i < VECTOR_IO_WORKERS; i++) {
        const w = new Worker(path.join(__dirname, 'vector-io-worker.js'), { workerData: { states: this.states.buffer, index: i } });
        w.unref();
        this.workers.push(w);
      }
    }
    return this.workers;
  }
}
