/* 16550 UART at COM1, polled.
 *
 * Every register access is a VM exit (~10 us on kvm-pvm), so transmit keeps a
 * count of free FIFO slots: after LSR reports the transmitter empty we may
 * write a whole FIFO's worth (16 bytes with the FIFO on, 1 without) before
 * reading LSR again. On an emulated UART that means about one LSR read per 16
 * characters instead of one per character. */
#include <stdint.h>
#include "io.h"
#include "serial.h"

#define COM1      0x3F8
#define REG_DATA  0      /* RBR (read) / THR (write); DLL when LCR.DLAB */
#define REG_IER   1      /* DLM when LCR.DLAB */
#define REG_FCR   2      /* write: FIFO control; read: IIR */
#define REG_LCR   3
#define REG_MCR   4
#define REG_LSR   5

#define LSR_DR    0x01   /* a received byte is waiting */
#define LSR_THRE  0x20   /* transmit holding register / FIFO empty */
#define IIR_FIFO  0xC0   /* both bits set: FIFOs enabled (16550A) */

static unsigned tx_room;   /* bytes we may write before polling LSR again */
static unsigned tx_depth;  /* 16 with a working FIFO, else 1 */

void serial_init(void)
{
    outb(COM1 + REG_IER, 0x00);   /* no interrupts: nobody would handle them */
    outb(COM1 + REG_LCR, 0x80);   /* DLAB on to set the divisor */
    outb(COM1 + REG_DATA, 0x01);  /* divisor 1 = 115200 baud */
    outb(COM1 + REG_IER, 0x00);
    outb(COM1 + REG_LCR, 0x03);   /* 8N1, DLAB off */
    /* Enable and clear the FIFOs. This drops anything typed before the first
     * prompt; rescuing it would race with bytes still arriving, so drivers
     * wait for "probe> " before typing. */
    outb(COM1 + REG_FCR, 0x07);
    outb(COM1 + REG_MCR, 0x03);   /* DTR + RTS; OUT2 off (it gates the IRQ line) */
    tx_depth = ((inb(COM1 + REG_FCR) & IIR_FIFO) == IIR_FIFO) ? 16 : 1;
    tx_room = 0;
}

void serial_putc(char c)
{
    if (tx_room == 0) {
        /* A UART that never drains would hang us here; emulated ones drain
         * instantly and a missing one reads 0xFF (THRE set). */
        while (!(inb(COM1 + REG_LSR) & LSR_THRE))
            ;
        tx_room = tx_depth;
    }
    outb(COM1 + REG_DATA, (uint8_t)c);
    tx_room--;
}

int serial_ready(void)
{
    return inb(COM1 + REG_LSR) & LSR_DR;
}

char serial_getc(void)
{
    /* No HLT: with an in-kernel irqchip and no interrupt source HLT would
     * never return. Each poll is one exit, which paces this loop. */
    while (!(inb(COM1 + REG_LSR) & LSR_DR))
        ;
    return (char)inb(COM1 + REG_DATA);
}
