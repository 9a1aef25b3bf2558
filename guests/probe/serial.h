/* Polled 16550 UART driver for COM1 (0x3F8). No interrupts: the probe has no
 * IDT, so input is found by polling LSR.DR. */
#ifndef PROBE_SERIAL_H
#define PROBE_SERIAL_H

void serial_init(void);
void serial_putc(char c);
/* Nonzero when a received byte is waiting (one LSR read, never blocks). */
int serial_ready(void);
/* Blocks (polling LSR) until a byte arrives. */
char serial_getc(void);

#endif
