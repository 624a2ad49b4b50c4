; Flat real-mode guest: prints a banner, then resets the machine through System Control
; Port A (0x92): bit 0 going from 0 to 1 is a fast reset. After the reset the VM boots
; this again. If no reset happens it says so and exits with status 0x7f.
bits 16
org 0x1000
start:
  cli
  xor ax, ax
  mov ds, ax
  mov si, banner
  call print
  in al, 0x92
  and al, 0xfe
  out 0x92, al              ; make sure bit 0 is 0 so the next write is an edge
  or al, 0x01
  out 0x92, al
  mov si, no_reset
  call print
  mov al, 0x3f
  out 0xf4, al
.park:
  hlt
  jmp .park

print:
  lodsb
  test al, al
  jz .done
  mov dx, 0x402
  out dx, al
  jmp print
.done:
  ret

banner:   db "boot: port 0x92 reset", 10, 0
no_reset: db "port 0x92 reset did nothing", 10, 0
