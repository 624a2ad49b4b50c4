; Flat real-mode test guest (loaded at 0x1000): sets COM1 to 115200 8N1 with FIFOs,
; prints "porthole echo ready\r\n", then echoes every byte it receives. Reception is
; interrupt-driven (IRQ 4 through the 8259 PIC, gated by MCR.OUT2) so the guest sleeps
; in HLT while idle; transmission polls LSR.THRE. End-to-end tests depend on the
; banner text: keep it exact.
bits 16
org 0x1000

%include "pic.inc"
%include "com1.inc"

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
  pic_init 0xef, 0xff

  mov word [IRQ4_VECTOR * 4], com1_isr
  mov word [IRQ4_VECTOR * 4 + 2], 0

  ; COM1: 115200 baud, 8N1, FIFOs; DTR, RTS, OUT2 (OUT2 connects the IRQ on a PC).
  com1_init 0x0b

  mov si, banner
.banner:
  lodsb
  test al, al
  jz .banner_done
  call putc
  jmp .banner
.banner_done:

  mov dx, COM1 + UART_IER
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
  mov dx, COM1 + UART_IIR
  in al, dx
  test al, 1
  jnz .done
.drain:
  mov dx, COM1 + UART_LSR
  in al, dx
  test al, 1
  jz .check
  mov dx, COM1 + UART_DATA
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
  mov dx, COM1 + UART_LSR
.wait:
  in al, dx
  test al, 0x20
  jz .wait
  pop ax
  mov dx, COM1 + UART_DATA
  out dx, al
  pop dx
  ret

banner: db "porthole echo ready", 13, 10, 0
