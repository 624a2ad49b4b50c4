; Flat real-mode guest: prints a banner, writes the reset value 0x06 to 0xcf9 and halts with
; interrupts off. KVM queues that byte in its coalesced write ring (the ring covers 0xcf8-0xcfb)
; and the halt makes no exit, so only the VM host's look at the ring applies it: the reset
; then boots this again and the banner shows a second time.
bits 16
org 0x1000
%include "debugcon.inc"
start:
  cli
  xor ax, ax
  mov ds, ax
  debugcon_puts banner
  mov dx, 0xcf9
  mov al, 0x06
  out dx, al
.halt:
  hlt
  jmp .halt

banner: db "banner", 10, 0
