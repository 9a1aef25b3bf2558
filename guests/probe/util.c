#include "util.h"

void *memset(void *d, int c, size_t n)
{
    unsigned char *p = d;
    while (n--)
        *p++ = (unsigned char)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    unsigned char *dp = d;
    const unsigned char *sp = s;
    while (n--)
        *dp++ = *sp++;
    return d;
}

void *memmove(void *d, const void *s, size_t n)
{
    unsigned char *dp = d;
    const unsigned char *sp = s;
    if (dp < sp) {
        while (n--)
            *dp++ = *sp++;
    } else {
        while (n--)
            dp[n] = sp[n];
    }
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *pa = a, *pb = b;
    for (size_t i = 0; i < n; i++)
        if (pa[i] != pb[i])
            return pa[i] < pb[i] ? -1 : 1;
    return 0;
}

size_t str_len(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int str_eq(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

void fmt_hex(char *buf, uint32_t v, int digits)
{
    static const char hex[] = "0123456789abcdef";
    if (digits < 1)
        digits = 1;
    if (digits > 8)
        digits = 8;
    for (int i = digits - 1; i >= 0; i--) {
        buf[i] = hex[v & 0xf];
        v >>= 4;
    }
    buf[digits] = '\0';
}

void fmt_dec(char *buf, uint32_t v)
{
    char tmp[11];
    int n = 0;
    /* 32-bit division is a native instruction; no libgcc helper needed. */
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (int i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    buf[n] = '\0';
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

enum parse_result parse_u32(const char *s, uint32_t *out)
{
    uint32_t base = 10;
    uint32_t v = 0;

    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    if (!*s)
        return PARSE_EMPTY;
    for (; *s; s++) {
        int d = hex_digit(*s);
        if (d < 0 || (uint32_t)d >= base)
            return PARSE_BAD_DIGIT;
        /* overflow check without 64-bit arithmetic */
        if (v > (0xFFFFFFFFu - (uint32_t)d) / base)
            return PARSE_OVERFLOW;
        v = v * base + (uint32_t)d;
    }
    *out = v;
    return PARSE_OK;
}

/* CRC-32 (reflected, polynomial 0xedb88320) a nibble at a time: a 16-entry
 * table instead of 256 entries or 8 shifts per byte, since every guest
 * instruction is slow under a software KVM. */
uint32_t crc32(const uint8_t *p, uint32_t n)
{
    static const uint32_t t[16] = {
        0x00000000, 0x1db71064, 0x3b6e20c8, 0x26d930ac, 0x76dc4190, 0x6b6b51f4, 0x4db26158, 0x5005713c,
        0xedb88320, 0xf00f9344, 0xd6d6a3e8, 0xcb61b38c, 0x9b64c2b0, 0x86d3d2d4, 0xa00ae278, 0xbdbdf21c,
    };
    uint32_t c = 0xffffffffu;
    for (uint32_t i = 0; i < n; i++) {
        c ^= p[i];
        c = (c >> 4) ^ t[c & 15];
        c = (c >> 4) ^ t[c & 15];
    }
    return ~c;
}
