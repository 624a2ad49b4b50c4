; MMIO-exit benchmark as a flat real-mode guest (Porthole and the C baseline run this):
; the PIO loop, then MMIO write and read loops (mmio-loop.inc), then isa-debug-exit.
bits 16
org 0x1000
%include "debug-exit.inc"
start:
  cli
  xor ax, ax
  mov ds, ax
  mov ss, ax
  mov sp, 0x7000
  call mmio_loops
  debug_exit 0

%include "mmio-loop.inc"
