; PIO-exit benchmark as a flat real-mode guest (Porthole and the C baseline run this).
; Times PIO_LOOP_BATCHES x PIO_LOOP_BATCH writes to port 0x80 with rdtsc (pio-loop.inc),
; prints the result and exits through isa-debug-exit.
bits 16
org 0x1000
%include "debug-exit.inc"
start:
  cli
  xor ax, ax
  mov ds, ax
  mov ss, ax
  mov sp, 0x7000
  call pio_loop
  debug_exit 0

%include "pio-loop.inc"
