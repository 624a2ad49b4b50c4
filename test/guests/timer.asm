; Flat real-mode timer test guest: proves a usable TSC and LAPIC timer.
; The LAPIC timer runs periodic (divide by 1, vector 0x40) with a real-mode IVT handler
; that counts ticks, EOIs and returns with a 16-bit iret (KVM's emulator here refuses
; only the 32-bit iret). The first ticks are awaited with a TSC-bounded poll loop, the
; rest with hlt (the in-kernel timer must wake a halted vCPU). Then it prints:
;   timer: start / timer irqs: N / tsc: <start hex> <end hex> / tsc per tick: <hex>
; and exits through isa-debug-exit.
bits 16
org 0x1000
%include "debugcon.inc"
%include "debug-exit.inc"

LAPIC           equ 0xfee00000
LAPIC_EOI       equ LAPIC + 0xb0
LAPIC_SVR       equ LAPIC + 0xf0
LAPIC_LVT_TIMER equ LAPIC + 0x320
LAPIC_INIT_CNT  equ LAPIC + 0x380
LAPIC_CUR_CNT   equ LAPIC + 0x390
LAPIC_DIVIDE    equ LAPIC + 0x3e0
TIMER_VECTOR    equ 0x40
LVT_PERIODIC    equ 1 << 17
LVT_MASKED      equ 1 << 16
; KVM's LAPIC bus clock is 1 GHz: 1,000,000 counts at divide-by-1 is 1 ms.
TIMER_COUNT     equ 1000000
POLLED_TICKS    equ 3
TOTAL_TICKS     equ 10
; Bound for the polled wait, in TSC cycles (several seconds on any host).
POLL_LIMIT_HI   equ 4               ; x 2^32 cycles

start:
  cli
  cld
  xor ax, ax
  mov ds, ax
  mov es, ax
  mov si, msg_start
  call print

  ; IVT entries: the timer vector and the spurious vector (0xff, no EOI for it).
  mov word [TIMER_VECTOR * 4], timer_isr
  mov word [TIMER_VECTOR * 4 + 2], 0
  mov word [0xff * 4], spurious_isr
  mov word [0xff * 4 + 2], 0

  call enter_unreal

  mov eax, [fs:dword LAPIC_SVR]
  or eax, 0x1ff
  mov [fs:dword LAPIC_SVR], eax
  mov dword [fs:dword LAPIC_DIVIDE], 0x0b          ; divide by 1
  mov dword [fs:dword LAPIC_LVT_TIMER], LVT_PERIODIC | TIMER_VECTOR

  rdtsc
  mov [tsc_start], eax
  mov [tsc_start + 4], edx
  mov dword [fs:dword LAPIC_INIT_CNT], TIMER_COUNT
  sti

  ; Polled wait for the first ticks, bounded by the TSC (high dword advancing POLL_LIMIT_HI).
  mov ebx, [tsc_start + 4]
  add ebx, POLL_LIMIT_HI
.poll:
  cmp dword [ticks], POLLED_TICKS
  jae .halt_wait
  pause
  rdtsc
  cmp edx, ebx
  jb .poll
  jmp .stop                 ; no interrupts: report what we have
.halt_wait:
  ; The timer demonstrably works, so hlt cannot sleep forever.
  hlt
  cmp dword [ticks], TOTAL_TICKS
  jb .halt_wait
.stop:
  cli
  mov dword [fs:dword LAPIC_LVT_TIMER], LVT_MASKED | TIMER_VECTOR
  mov dword [fs:dword LAPIC_INIT_CNT], 0
  rdtsc
  mov [tsc_end], eax
  mov [tsc_end + 4], edx

  mov si, msg_irqs
  call print
  mov eax, [ticks]
  call print_dec32
  mov si, msg_tsc
  call print
  mov eax, [tsc_start + 4]
  call print_hex
  mov eax, [tsc_start]
  call print_hex
  mov al, ' '
  call putc
  mov eax, [tsc_end + 4]
  call print_hex
  mov eax, [tsc_end]
  call print_hex
  mov si, msg_tick_tsc
  call print
  ; TSC cycles between the first and last tick (32 bits is plenty for 10 ms).
  mov eax, [tsc_last_tick]
  sub eax, [tsc_first_tick]
  call print_hex
  mov al, 10
  call putc

  debug_exit 0

timer_isr:
  push eax
  push edx
  rdtsc
  cmp dword [ticks], 0
  jne .not_first
  mov [tsc_first_tick], eax
.not_first:
  mov [tsc_last_tick], eax
  inc dword [ticks]
  mov dword [fs:dword LAPIC_EOI], 0
  pop edx
  pop eax
  iret

spurious_isr:
  iret

%include "unreal.inc"

%include "debugcon-print.inc"

; Prints EAX as 8 hex digits.
print_hex:
  push eax
  push cx
  mov cx, 8
.digit:
  rol eax, 4
  push ax
  and al, 0x0f
  add al, '0'
  cmp al, '9'
  jbe .out
  add al, 'a' - '9' - 1
.out:
  call putc
  pop ax
  loop .digit
  pop cx
  pop eax
  ret

; Prints EAX in decimal.
print_dec32:
  push eax
  push ebx
  push cx
  push edx
  mov ebx, 10
  xor cx, cx
.divide:
  xor edx, edx
  div ebx
  push dx
  inc cx
  test eax, eax
  jnz .divide
.emit:
  pop ax
  add al, '0'
  call putc
  loop .emit
  pop edx
  pop cx
  pop ebx
  pop eax
  ret

align 4
ticks:          dd 0
tsc_start:      dq 0
tsc_end:        dq 0
tsc_first_tick: dd 0
tsc_last_tick:  dd 0

msg_start:    db "timer: start", 10, 0
msg_irqs:     db "timer irqs: ", 0
msg_tsc:      db 10, "tsc: ", 0
msg_tick_tsc: db 10, "tsc first to last tick: ", 0
