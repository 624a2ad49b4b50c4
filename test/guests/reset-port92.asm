; Flat real-mode guest: prints a banner, then resets the machine through System Control
; Port A (0x92): bit 0 going from 0 to 1 is a fast reset. After the reset the VM boots
; this again. If no reset happens it says so and exits with status 0x7f.
bits 16
org 0x1000
%include "debugcon.inc"
%include "debug-exit.inc"
start:
  cli
  xor ax, ax
  mov ds, ax
  debugcon_puts banner
  in al, 0x92
  and al, 0xfe
  out 0x92, al              ; make sure bit 0 is 0 so the next write is an edge
  or al, 0x01
  out 0x92, al
  debugcon_puts no_reset
  debug_exit 0x3f

banner:   db "boot: port 0x92 reset", 10, 0
no_reset: db "port 0x92 reset did nothing", 10, 0
