// Minimal KVM runner for the PIO-exit benchmark: the C baseline Porthole is compared with.
// It builds the same machine as Porthole for a flat guest (in-kernel irqchip and PIT,
// identity map and TSS pages, KVM's supported CPUID, 256 MiB of RAM), loads the flat
// binary at 0x1000 in real mode and handles each exit with the same trivial work as
// Porthole's device models: port 0x80 keeps the last POST code and counts writes, 0x402
// prints, 0xf4 ends the run; an MMIO exit (the MMIO bench touches an address nothing
// decodes) reads as all ones and its writes are dropped, as Porthole's unassigned MMIO.
// Prints the guest's output, then "tsc_khz: N" (the guest TSC frequency from
// KVM_GET_TSC_KHZ) and "exits: N".
//
// Usage: kvm-baseline GUEST.bin
//        KVM_BASELINE_TOUCH_PAGES=N kvm-baseline GUEST.bin: also reads one byte of each of N
//        fixed pages on every exit, as a bigger user-space working set would (the profile
//        uses it to price the TLB refills a VM exit costs in the rig's TCG L1, which flushes
//        its software TLB on every nested VM entry and exit).
//        kvm-baseline --ioctl-loop N: times N KVM_GET_API_VERSION ioctls (the cheapest
//        successful KVM ioctl) and prints "ioctl_ns: X", the syscall cost that Porthole's
//        koffi call of the same ioctl is compared with (the exit-path profile).
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define RAM_BYTES (256UL << 20)
#define LOAD_ADDR 0x1000

static void die(const char *what) {
  fprintf(stderr, "kvm-baseline: %s: %s\n", what, strerror(errno));
  exit(2);
}

static int checked_ioctl(int fd, unsigned long request, void *arg, const char *what) {
  int r = ioctl(fd, request, arg);
  if (r < 0) die(what);
  return r;
}

static int ioctl_loop(long n) {
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) die("/dev/kvm");
  struct timespec t0, t1;
  for (long i = 0; i < n / 10; i++) ioctl(kvm, KVM_GET_API_VERSION, 0);  // warm up
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long i = 0; i < n; i++) {
    if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) die("KVM_GET_API_VERSION");
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double ns = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
  printf("ioctl_ns: %.1f\n", ns / n);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--ioctl-loop") == 0) return ioctl_loop(atol(argv[2]));
  if (argc != 2) {
    fprintf(stderr, "usage: kvm-baseline GUEST.bin\n");
    return 2;
  }
  FILE *image = fopen(argv[1], "rb");
  if (!image) die(argv[1]);

  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) die("/dev/kvm");
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) die("KVM_CREATE_VM");
  uint64_t identity_map = 0xfeffc000;
  checked_ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &identity_map, "KVM_SET_IDENTITY_MAP_ADDR");
  if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfeffd000UL) < 0) die("KVM_SET_TSS_ADDR");
  if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
  struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
  checked_ioctl(vm, KVM_CREATE_PIT2, &pit, "KVM_CREATE_PIT2");

  uint8_t *ram = mmap(NULL, RAM_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (ram == MAP_FAILED) die("mmap guest RAM");
  size_t loaded = fread(ram + LOAD_ADDR, 1, 0xa0000 - LOAD_ADDR, image);
  fclose(image);
  if (loaded == 0) {
    fprintf(stderr, "kvm-baseline: %s is empty\n", argv[1]);
    return 2;
  }
  struct kvm_userspace_memory_region region = {
      .slot = 0, .guest_phys_addr = 0, .memory_size = RAM_BYTES, .userspace_addr = (uint64_t)(uintptr_t)ram};
  checked_ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region, "KVM_SET_USER_MEMORY_REGION");

  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) die("KVM_CREATE_VCPU");
  int nent = 256;
  struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + nent * sizeof(struct kvm_cpuid_entry2));
  cpuid->nent = nent;
  checked_ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid, "KVM_GET_SUPPORTED_CPUID");
  checked_ioctl(vcpu, KVM_SET_CPUID2, cpuid, "KVM_SET_CPUID2");
  int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size < 0) die("KVM_GET_VCPU_MMAP_SIZE");
  struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) die("mmap kvm_run");

  struct kvm_sregs sregs;
  checked_ioctl(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
  struct kvm_segment *segs[] = {&sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss};
  for (unsigned i = 0; i < sizeof(segs) / sizeof(segs[0]); i++) {
    segs[i]->base = 0;
    segs[i]->selector = 0;
  }
  checked_ioctl(vcpu, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");
  struct kvm_regs regs = {.rip = LOAD_ADDR, .rsp = 0x7000, .rflags = 2};
  checked_ioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");

  const char *touch_env = getenv("KVM_BASELINE_TOUCH_PAGES");
  long touch_pages = touch_env ? atol(touch_env) : 0;
  if (touch_pages < 0 || touch_pages > 65536) touch_pages = 0;
  volatile uint8_t *touch = NULL;
  if (touch_pages > 0) {
    touch = mmap(NULL, touch_pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (touch == MAP_FAILED) die("mmap touch pages");
    for (long p = 0; p < touch_pages; p++) touch[p * 4096] = 1;
  }
  unsigned touch_sum = 0;

  // The devices' state: what Porthole's PostCodePort and DebugConsole keep.
  uint8_t post_code = 0;
  uint64_t post_writes = 0, exits = 0, mmio_exits = 0;
  int exit_status = -1;
  while (exit_status < 0) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      die("KVM_RUN");
    }
    exits++;
    for (long p = 0; p < touch_pages; p++) touch_sum += touch[p * 4096];
    if (run->exit_reason == KVM_EXIT_MMIO) {
      mmio_exits++;
      if (!run->mmio.is_write) memset(run->mmio.data, 0xff, sizeof(run->mmio.data));
      continue;
    }
    if (run->exit_reason != KVM_EXIT_IO) {
      fprintf(stderr, "kvm-baseline: unexpected exit reason %u\n", run->exit_reason);
      return 2;
    }
    uint8_t *data = (uint8_t *)run + run->io.data_offset;
    for (uint32_t i = 0; i < run->io.count; i++, data += run->io.size) {
      if (run->io.direction == KVM_EXIT_IO_OUT) {
        if (run->io.port == 0x80) {
          post_code = data[0];
          post_writes++;
        } else if (run->io.port == 0x402) {
          fputc(data[0], stdout);
        } else if (run->io.port == 0xf4) {
          exit_status = ((data[0] << 1) | 1) & 0xff;
        }
      } else {
        memset(data, run->io.port == 0x80 ? post_code : 0xff, run->io.size);
      }
    }
  }
  int tsc_khz = ioctl(vcpu, KVM_GET_TSC_KHZ, 0);
  if (touch_pages > 0) printf("touched: %u\n", touch_sum);
  printf("tsc_khz: %d\nexits: %llu\npost_writes: %llu\nmmio_exits: %llu\n", tsc_khz, (unsigned long long)exits,
         (unsigned long long)post_writes, (unsigned long long)mmio_exits);
  return exit_status == 1 ? 0 : exit_status;
}
