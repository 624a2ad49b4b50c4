; Flat real-mode guest that never stops making progress: it prints a banner, then writes
; an ever-increasing counter to the POST code port (0x80) forever. The lifecycle test
; watches the port's write count to see whether the guest runs.
bits 16
org 0x1000
%include "debugcon.inc"
start:
  cli
  xor ax, ax
  mov ds, ax
  debugcon_puts banner
  xor al, al
.loop:
  inc al
  out 0x80, al
  jmp .loop

banner: db "counting", 10, 0
