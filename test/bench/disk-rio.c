// Random block I/O for the disk bench (test/bench/disk.ts), run inside the L2 kit, whose
// busybox has no fio: OPS reads or writes of BLOCK bytes at random BLOCK-aligned offsets in
// [FIRST, FIRST + SPAN) of DEVICE, one at a time, with O_DIRECT so L2's page cache does not
// answer for the device. Writes end with an fsync, which is timed too. Prints one line:
//   rio dir=read ops=N bytes=B ns=T
// Usage: disk-rio DEVICE read|write OPS BLOCK SEED FIRST SPAN
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: the same offsets under every VMM for a given seed. */
static uint64_t next_random(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 2685821657736338717ull;
}

static int number(const char *text, uint64_t *out) {
  char *end;
  *out = strtoull(text, &end, 0);
  return *text != '\0' && *end == '\0';
}

int main(int argc, char **argv) {
  uint64_t ops, block, seed, first, span;
  if (argc != 8 || (strcmp(argv[2], "read") && strcmp(argv[2], "write")) || !number(argv[3], &ops) || !number(argv[4], &block) ||
      !number(argv[5], &seed) || !number(argv[6], &first) || !number(argv[7], &span) || block == 0 || block % 512 ||
      first % block || span < block || seed == 0) {
    fprintf(stderr, "usage: disk-rio DEVICE read|write OPS BLOCK SEED FIRST SPAN (BLOCK a multiple of 512, FIRST of BLOCK, SEED not 0)\n");
    return 2;
  }
  int writing = argv[2][0] == 'w';
  int fd = open(argv[1], (writing ? O_RDWR : O_RDONLY) | O_DIRECT);
  if (fd < 0) {
    perror(argv[1]);
    return 1;
  }
  void *buf;
  if (posix_memalign(&buf, 4096, block)) {
    fprintf(stderr, "out of memory\n");
    return 1;
  }
  memset(buf, 0xa5, block);
  uint64_t blocks = span / block;
  uint64_t start = now_ns();
  for (uint64_t i = 0; i < ops; i++) {
    off_t at = (off_t)(first + (next_random(&seed) % blocks) * block);
    ssize_t n = writing ? pwrite(fd, buf, block, at) : pread(fd, buf, block, at);
    if (n != (ssize_t)block) {
      fprintf(stderr, "%s at %lld: %s\n", argv[2], (long long)at, n < 0 ? strerror(errno) : "short transfer");
      return 1;
    }
  }
  if (writing && fsync(fd)) {
    perror("fsync");
    return 1;
  }
  uint64_t ns = now_ns() - start;
  printf("rio dir=%s ops=%llu bytes=%llu ns=%llu\n", argv[2], (unsigned long long)ops, (unsigned long long)(ops * block), (unsigned long long)ns);
  return 0;
}
