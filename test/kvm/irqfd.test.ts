import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';
import * as libc from '../../native/libc';
import { DEBUGCON_RING } from '../../main/vmm/platform/platform';
import { ByteRing, COMMAND, ControlBlock, kickVcpu } from '../../main/vmm/shared/control';
import { STATS_CAPACITY } from '../../main/vmm/shared/stats';
import type { MachineEnd } from '../../main/vmm/machine/machine';
import type { DoorbellReport, IrqfdMachineData, IrqfdMachineMessage } from '../helpers/irqfd-machine';
import { flatConfig, kvmSkipReason } from '../helpers/vm';

const skip = kvmSkipReason() ?? false;
const LINE_IRQS = 10;
const MSI_IRQS = 5;

// test/guests/irqfd.asm on the real Machine, with the irqfds and doorbells a device would
// set up (test/helpers/irqfd-machine.ts). This thread plays the VM host backend: it writes
// the eventfds while vCPU 0 sits in KVM_RUN on the machine thread, which runs no
// JavaScript for them.
test('irqfd raises a line and an MSI in a running guest; ioeventfd doorbells count writes that never exit', { skip, timeout: 120000 }, async () => {
  const control = new ControlBlock();
  const rings = Array.from({ length: 5 }, () => new ByteRing());
  const data: IrqfdMachineData = {
    config: flatConfig('irqfd'), control: control.buffer, rings: rings.map((r) => r.buffer),
    stats: new SharedArrayBuffer(STATS_CAPACITY * 4),
  };
  const worker = new Worker(path.join(__dirname, '..', 'helpers', 'irqfd-machine.js'), { workerData: data });
  let output = '';
  const reports: DoorbellReport[] = [];
  let wired: { lineFd: number; resampleFd: number; msiFd: number } | null = null;
  let runPage: { buffer: SharedArrayBuffer; offset: number } | null = null;
  let end: MachineEnd | null = null;
  const ended = new Promise<void>((resolve, reject) => {
    worker.on('message', (m: IrqfdMachineMessage) => {
      if (m.type === 'wired') {
        // Our own descriptors for the same eventfds: the machine closes its own when it ends.
        wired = { lineFd: libc.dup(m.lineFd), resampleFd: libc.dup(m.resampleFd), msiFd: libc.dup(m.msiFd) };
      } else if (m.type === 'started') {
        runPage = m.runPages[0];
      } else if (m.type === 'report') {
        reports.push(m.report);
      } else if (m.type === 'ended') {
        end = m.end;
        resolve();
      }
    });
    worker.on('error', reject);
  });
  const drain = () => { output += Buffer.from(rings[DEBUGCON_RING].drain()).toString('latin1'); };
  const deadline = Date.now() + 100000;
  const until = async (what: string, done: () => boolean, step?: () => void) => {
    for (;;) {
      drain();
      if (done()) return;
      if (end !== null) throw new Error(`the machine ended (${JSON.stringify(end)}) while waiting for ${what}; output:\n${output}`);
      if (Date.now() > deadline) throw new Error(`no ${what} in time; output:\n${output}`);
      step?.();
      await sleep(2);
    }
  };

  try {
    await until('wiring', () => wired !== null && runPage !== null);
    const fds = wired as unknown as { lineFd: number; resampleFd: number; msiFd: number };

    // A: each write raises IRQ 5 until the guest's EOI, when KVM signals the resample eventfd.
    await until('"line ready"', () => output.includes('irqfd: line ready\n'));
    let resamples = 0;
    for (let i = 0; i < LINE_IRQS; i++) {
      libc.eventfdWrite(fds.lineFd);
      await until(`the EOI of line interrupt ${i + 1}`, () => {
        resamples += libc.eventfdRead(fds.resampleFd);
        return resamples > i;
      });
    }
    await until('the line count', () => /line irqs: \d+\n/.test(output));
    assert.equal(/line irqs: (\d+)\n/.exec(output)?.[1], String(LINE_IRQS), 'one interrupt per write');
    assert.equal(resamples, LINE_IRQS, 'one resample per EOI');

    // B: MSI writes until the guest has counted enough (the LAPIC merges ones that overlap).
    await until('"msi ready"', () => output.includes('irqfd: msi ready\n'));
    let msiWrites = 0;
    await until('the MSI count', () => /msi irqs: \d+\n/.test(output), () => { libc.eventfdWrite(fds.msiFd); msiWrites++; });
    const msiCount = Number(/msi irqs: (\d+)\n/.exec(output)?.[1]);
    assert.ok(msiCount >= MSI_IRQS && msiCount <= msiWrites, `${msiCount} MSIs from ${msiWrites} writes`);

    // C: the guest rings the doorbells, reports, and exits.
    await ended;
    drain();
    assert.deepEqual(end, { reason: 'poweroff', exitCode: 1 }, output);
    assert.ok(output.endsWith('doorbells: done\n'), output);
    assert.deepEqual(reports, [
      // No write to a doorbell exited; the 25 writes the datamatch refused did.
      { phase: 1, rings: { port: 100, mmio: 100, match: 50 }, exits: { port: 0, mmio: 0, match: 25 } },
      // The port doorbell was released at report 1: its writes exit again.
      { phase: 2, rings: { port: 0, mmio: 0, match: 0 }, exits: { port: 5, mmio: 0, match: 25 } },
    ]);
  } finally {
    if (end === null) {
      control.setCommand(COMMAND.STOP);
      const page = runPage as { buffer: SharedArrayBuffer; offset: number } | null;
      if (page) kickVcpu(page.buffer, page.offset, control.tid(0));
      await Promise.race([ended, sleep(10000)]);
    }
    await worker.terminate();
    const fds = wired as { lineFd: number; resampleFd: number; msiFd: number } | null;
    if (fds) for (const fd of [fds.lineFd, fds.resampleFd, fds.msiFd]) libc.close(fd);
  }
});
