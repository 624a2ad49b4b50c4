; Flat real-mode test guest: prints to the debug console, exits through isa-debug-exit.
bits 16
org 0x1000
%include "debugcon.inc"
start:
  debugcon_puts msg
  mov al, 0x10          ; exit status (0x10 << 1) | 1 = 0x21
  out 0xf4, al
  hlt
msg: db "hello from the guest", 10, 0
