; Flat real-mode test guest: prints to the debug console, exits through isa-debug-exit.
bits 16
org 0x1000
start:
  mov si, msg
.next:
  lodsb
  test al, al
  jz .done
  mov dx, 0x402
  out dx, al
  jmp .next
.done:
  mov al, 0x10          ; exit status (0x10 << 1) | 1 = 0x21
  out 0xf4, al
  hlt
msg: db "hello from the guest", 10, 0
