; Flat real-mode guest: prints a banner, then resets the machine through the i8042
; (command 0xFE pulses the CPU reset line). After the reset the VM boots this again.
; If no reset happens it says so and exits through isa-debug-exit with status 0x7f.
bits 16
org 0x1000
start:
  cli
  xor ax, ax
  mov ds, ax
  mov si, banner
  call print
  ; Wait for the controller's input buffer to be empty, as firmware does.
  mov cx, 1000
.wait_ibf:
  in al, 0x64
  test al, 0x02
  loopnz .wait_ibf
  mov al, 0xfe
  out 0x64, al
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

banner:   db "boot: i8042 reset", 10, 0
no_reset: db "i8042 reset did nothing", 10, 0
