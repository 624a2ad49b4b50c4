; Flat guest (loaded at 0x1000) that floods COM1 without end: serial-flood.inc's two phases
; again and again, so a view that watches a busy serial port (the Performance tab's e2e
; test) sees one for as long as it looks. The host stops it.
bits 16
org 0x1000
%define SERIAL_FLOOD_BYTES 16384
start:
  cli
  cld
  xor ax, ax
  mov ds, ax
  mov ss, ax
  mov sp, 0x7000
.again:
  call serial_flood
  jmp .again

%include "serial-flood.inc"
