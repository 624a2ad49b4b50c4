; Flat real-mode guest: shows that guest RAM keeps its contents through resets (the VM
; host makes RAM once per VM; each reset rebuilds only the machine). It keeps a marker at
; physical 0x20000 (away from this image at 0x1000 and the stack below 0x7000):
;   no marker:  writes it with stage 1, prints "ram: marker written", resets itself
;               through port 0x92;
;   stage 1:    (after the guest reset) sets stage 2, prints "ram: marker kept through
;               the guest reset", parks with cli/hlt for the user to reset the VM;
;   stage 2:    (after the user reset) prints "ram: marker kept through the user reset"
;               and exits through isa-debug-exit with status (0x21 << 1) | 1 = 0x43.
; Anything else ends with status 0x7d (bad stage) or 0x7f (the reset did nothing).
bits 16
org 0x1000
%include "debugcon.inc"
%include "debug-exit.inc"

MARKER_SEG equ 0x2000           ; physical 0x20000
MAGIC      equ 0x4d415250       ; "PRAM" in memory order

start:
  cli
  xor ax, ax
  mov ds, ax
  mov ax, MARKER_SEG
  mov es, ax
  cmp dword [es:0], MAGIC
  jne fresh
  mov al, [es:4]
  cmp al, 1
  je after_guest_reset
  cmp al, 2
  je after_user_reset
  debugcon_puts bad_stage
  debug_exit 0x3e

fresh:
  mov dword [es:0], MAGIC
  mov byte [es:4], 1
  debugcon_puts written
  in al, 0x92
  and al, 0xfe
  out 0x92, al              ; bit 0 clear, so the next write is an edge
  or al, 0x01
  out 0x92, al
  debugcon_puts no_reset
  debug_exit 0x3f

after_guest_reset:
  mov byte [es:4], 2
  debugcon_puts kept_guest
park:
  cli
  hlt
  jmp park

after_user_reset:
  mov byte [es:4], 3
  debugcon_puts kept_user
  debug_exit 0x21

written:    db "ram: marker written", 10, 0
kept_guest: db "ram: marker kept through the guest reset", 10, 0
kept_user:  db "ram: marker kept through the user reset", 10, 0
bad_stage:  db "ram: marker has a bad stage", 10, 0
no_reset:   db "ram: port 0x92 reset did nothing", 10, 0
