; Serial throughput guest (flat, loaded at 0x1000): see serial-flood.inc. After both
; phases it parks with interrupts off; the host stops it once every byte has arrived
; (exiting would close the backend while bytes may still be on their way).
bits 16
org 0x1000
start:
  cli
  cld
  xor ax, ax
  mov ds, ax
  mov ss, ax
  mov sp, 0x7000
  call serial_flood
.park:
  hlt
  jmp .park

%include "serial-flood.inc"
