; Serial throughput loop as a legacy option ROM for QEMU (-option-rom): SeaBIOS far-calls
; the init entry at offset 3 in real mode. Same loop as serial-flood.asm; parks afterwards.
; The checksum byte at the end is fixed up by the benchmark (sum of all bytes = 0).
bits 16
org 0
%include "optionrom-header.inc"
  optionrom_header 2, init           ; 1 KiB
init:
  cli
  cld
  push cs
  pop ds
  call serial_flood
.park:
  cli
  hlt
  jmp .park

%include "serial-flood.inc"

  optionrom_end
