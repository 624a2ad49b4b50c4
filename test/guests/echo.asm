; Flat real-mode test guest (loaded at 0x1000): sets COM1 to 115200 8N1 with FIFOs,
; prints "porthole echo ready\r\n", then echoes every byte it receives. Reception is
; interrupt-driven (IRQ 4 through the 8259 PIC, gated by MCR.OUT2) so the guest sleeps
; in HLT while idle; transmission polls LSR.THRE. End-to-end tests depend on the
; banner text: keep it exact.
bits 16
org 0x1000

COM1      equ 0x3f8
REG_DATA  equ 0
REG_IER   equ 1
REG_IIR   equ 2
REG_FCR   equ 2
REG_LCR   equ 3
REG_MCR   equ 4
REG_LSR   equ 5
IRQ4_VECTOR equ 0x0c          ; the PIC's IRQ base is 8, as on a PC

start:
  cli
  xor ax, ax
  mov ds, ax
  mov es, ax
  mov ss, ax
  mov sp, 0x7000
  cld

  ; 8259 pair: edge-triggered, vectors 8..15 and 0x70..0x77, only IRQ 4 unmasked.
  mov al, 0x11
  out 0x20, al
  out 0xa0, al
  mov al, 0x08
  out 0x21, al
  mov al, 0x70
  out 0xa1, al
  mov al, 0x04
  out 0x21, al
  mov al, 0x02
  out 0xa1, al
  mov al, 0x01
  out 0x21, al
  out 0xa1, al
  mov al, 0xef
  out 0x21, al
  mov al, 0xff
  out 0xa1, al

  mov word [IRQ4_VECTOR * 4], com1_isr
  mov word [IRQ4_VECTOR * 4 + 2], 0

  ; COM1: 115200 baud (divisor 1), 8N1, FIFOs on and cleared, trigger level 14.
  mov dx, COM1 + REG_IER
  xor al, al
  out dx, al
  mov dx, COM1 + REG_LCR
  mov al, 0x80
  out dx, al
  mov dx, COM1 + REG_DATA
  mov al, 1
  out dx, al
  mov dx, COM1 + REG_IER
  xor al, al
  out dx, al
  mov dx, COM1 + REG_LCR
  mov al, 0x03
  out dx, al
  mov dx, COM1 + REG_FCR
  mov al, 0xc7
  out dx, al
  mov dx, COM1 + REG_MCR
  mov al, 0x0b                ; DTR, RTS, OUT2 (OUT2 connects the IRQ on a PC)
  out dx, al

  mov si, banner
.banner:
  lodsb
  test al, al
  jz .banner_done
  call putc
  jmp .banner
.banner_done:

  mov dx, COM1 + REG_IER
  mov al, 0x01                ; received data available (and character timeout)
  out dx, al

.idle:
  sti
  hlt
  jmp .idle

; IRQ 4: drain the receive FIFO, echoing each byte, until IIR shows nothing pending.
com1_isr:
  push ax
  push dx
.check:
  mov dx, COM1 + REG_IIR
  in al, dx
  test al, 1
  jnz .done
.drain:
  mov dx, COM1 + REG_LSR
  in al, dx
  test al, 1
  jz .check
  mov dx, COM1 + REG_DATA
  in al, dx
  call putc
  jmp .drain
.done:
  mov al, 0x20                ; non-specific EOI
  out 0x20, al
  pop dx
  pop ax
  iret

; Sends AL on COM1 once the transmitter holding register is empty.
putc:
  push dx
  push ax
  mov dx, COM1 + REG_LSR
.wait:
  in al, dx
  test al, 0x20
  jz .wait
  pop ax
  mov dx, COM1 + REG_DATA
  out dx, al
  pop dx
  ret

banner: db "porthole echo ready", 13, 10, 0
