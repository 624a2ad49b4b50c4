; MMIO-exit benchmark as a legacy option ROM, for QEMU (-option-rom): the same loops as
; mmio-loop.asm. The checksum byte is fixed up by the benchmark runner.
bits 16
org 0
%include "optionrom-header.inc"
%include "debug-exit.inc"
  optionrom_header 4, init           ; 2 KiB
init:
  cli
  call mmio_loops
  debug_exit 0

%include "mmio-loop.inc"

  optionrom_end
