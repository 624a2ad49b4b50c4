; PIO-exit benchmark as a legacy option ROM, for QEMU (-option-rom): SeaBIOS far-calls
; the init entry at offset 3 in real mode. Runs the same loop as pio-loop.asm, prints
; the result and exits through isa-debug-exit (QEMU -device isa-debug-exit,iobase=0xf4).
; The checksum byte at the end is fixed up by the benchmark runner (sum of all bytes = 0).
bits 16
org 0
%include "optionrom-header.inc"
%include "debug-exit.inc"
  optionrom_header 2, init           ; 1 KiB
init:
  cli
  call pio_loop
  debug_exit 0

%include "pio-loop.inc"

  optionrom_end
