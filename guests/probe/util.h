/* Freestanding string and number helpers (no libc here). */
#ifndef PROBE_UTIL_H
#define PROBE_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* gcc may emit calls to these even with -ffreestanding, so they must exist. */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);

size_t str_len(const char *s);
int str_eq(const char *a, const char *b);

/* Writes exactly `digits` (1..8) lowercase hex digits and a NUL. */
void fmt_hex(char *buf, uint32_t v, int digits);
/* Writes the decimal form and a NUL; buf needs 11 bytes. */
void fmt_dec(char *buf, uint32_t v);

enum parse_result { PARSE_OK = 0, PARSE_EMPTY, PARSE_BAD_DIGIT, PARSE_OVERFLOW };
/* Accepts "0x"/"0X"-prefixed hex or plain decimal, the whole string. */
enum parse_result parse_u32(const char *s, uint32_t *out);

#endif
