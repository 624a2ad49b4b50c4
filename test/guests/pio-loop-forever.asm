; Flat real-mode guest that never stops making progress: it prints a banner, then writes
; an ever-increasing counter to the POST code port (0x80) forever. The lifecycle test
; watches the port's write count to see whether the guest runs.
bits 16
org 0x1000
start:
  cli
  xor ax, ax
  mov ds, ax
  mov si, banner
.next:
  lodsb
  test al, al
  jz .count
  mov dx, 0x402
  out dx, al
  jmp .next
.count:
  xor al, al
.loop:
  inc al
  out 0x80, al
  jmp .loop

banner: db "counting", 10, 0
