import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
import * as libc from '../../native/libc';
import { KvmVm } from '../../native/kvm';

test('eventfd: writes add to the counter, a read returns and clears it, an empty non-blocking read is 0', () => {
  const fd = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
  try {
    assert.equal(libc.eventfdRead(fd), 0);
    for (let i = 0; i < 3; i++) assert.equal(libc.eventfdWrite(fd), true);
    assert.equal(libc.eventfdWrite(fd, 5), true);
    assert.equal(libc.eventfdRead(fd), 8);
    assert.equal(libc.eventfdRead(fd), 0);
    assert.equal(libc.eventfdWrite(fd, 0xffffffff), true);
    assert.equal(libc.eventfdRead(fd), 0xffffffff);
    assert.throws(() => libc.eventfdWrite(fd, 0), RangeError);
    assert.throws(() => libc.eventfdWrite(fd, 2 ** 32), RangeError);
  } finally {
    libc.close(fd);
  }
  assert.throws(() => libc.eventfdWrite(fd), (e: Error) => e instanceof libc.NativeError && /write\(eventfd\): EBADF/.test(e.message));
  assert.throws(() => libc.eventfdRead(fd), /read\(eventfd\): EBADF/);
});

test('eventfd: another thread writes the same descriptor', async () => {
  const fd = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
  try {
    const worker = new Worker(
      `const libc = require(${JSON.stringify(require.resolve('../../native/libc'))});
       const { workerData } = require('node:worker_threads');
       for (let i = 0; i < 7; i++) libc.eventfdWrite(workerData.fd);`,
      { eval: true, workerData: { fd } },
    );
    await new Promise((resolve, reject) => { worker.once('exit', resolve); worker.once('error', reject); });
    assert.equal(libc.eventfdRead(fd), 7);
  } finally {
    libc.close(fd);
  }
});

test('KVM irqfd and ioeventfd errors name the call, its arguments and the errno', () => {
  // An eventfd is no VM: KVM's ioctls on it fail with ENOTTY, as a stale descriptor would.
  const fd = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
  try {
    const vm = new KvmVm(fd);
    assert.throws(() => vm.irqfd(fd, 5, { resampleFd: fd }), /^NativeError: KVM_IRQFD\(fd \d+, GSI 5, assign, resample\): ENOTTY/);
    assert.throws(() => vm.irqfd(fd, 24, { deassign: true }), /KVM_IRQFD\(fd \d+, GSI 24, deassign\): ENOTTY/);
    assert.throws(() => vm.ioeventfd({ address: 0xfe000010, length: 4, eventFd: fd, pio: false, datamatch: 0xabcd }),
      /KVM_IOEVENTFD\(MMIO 0xfe000010\+4, data 0xabcd\): ENOTTY/);
    assert.throws(() => vm.ioeventfd({ address: 0x780, length: 1, eventFd: fd, pio: true, deassign: true }),
      /KVM_IOEVENTFD\(port 0x780\+1, deassign\): ENOTTY/);
  } finally {
    libc.close(fd);
  }
});
