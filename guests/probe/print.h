/* Console output helpers on top of the serial driver. Line ends are \r\n. */
#ifndef PROBE_PRINT_H
#define PROBE_PRINT_H

#include <stdint.h>

void print(const char *s);
void print_nl(void);
void println(const char *s);
/* "0x" + exactly `digits` lowercase hex digits */
void print_hex(uint32_t v, int digits);
/* exactly `digits` hex digits, no prefix */
void print_hex_raw(uint32_t v, int digits);
void print_dec(uint32_t v);
/* decimal, all 64 bits (TSC deltas) */
void print_dec64(uint64_t v);
/* "0x" + as few hex digits as needed (at least one) */
void print_hex_min(uint32_t v);
/* n bytes as two-digit hex, separated by single spaces */
void print_bytes(const uint8_t *p, uint32_t n);

#endif
