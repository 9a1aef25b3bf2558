#include "print.h"
#include "serial.h"
#include "util.h"

void print(const char *s)
{
    while (*s)
        serial_putc(*s++);
}

void print_nl(void)
{
    serial_putc('\r');
    serial_putc('\n');
}

void println(const char *s)
{
    print(s);
    print_nl();
}

void print_hex_raw(uint32_t v, int digits)
{
    char buf[12];
    fmt_hex(buf, v, digits);
    print(buf);
}

void print_hex(uint32_t v, int digits)
{
    print("0x");
    print_hex_raw(v, digits);
}

void print_dec(uint32_t v)
{
    char buf[12];
    fmt_dec(buf, v);
    print(buf);
}

void print_dec64(uint64_t v)
{
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + (int)(v % 10));   /* 64-bit division from libgcc */
        v /= 10;
    } while (v);
    print(buf + i);
}

void print_hex_min(uint32_t v)
{
    int digits = 1;
    while (digits < 8 && (v >> (digits * 4)))
        digits++;
    print_hex(v, digits);
}

void print_bytes(const uint8_t *p, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        if (i)
            serial_putc(' ');
        print_hex_raw(p[i], 2);
    }
}
