/* `pattern fill|check|loop START LEN SEED`: a seeded memory pattern that one
 * command writes and a later one verifies, so a check can run on another
 * machine than the fill (migration: fill on the source, check on the
 * destination). `loop` keeps the guest writing while it migrates: pass after
 * pass it verifies the previous seed's pattern and writes the next seed's,
 * until a key arrives on the serial port. Every aligned word gets its own value, derived from its
 * address and the seed, so a page that arrives at the wrong offset, stale or
 * zeroed fails the check with the first wrong address. */
#include <stdint.h>
#include "commands.h"
#include "mem.h"
#include "print.h"
#include "serial.h"
#include "util.h"

/* xorshift of address ^ seed * golden ratio: neighbouring words and words
 * 2^k apart differ, and different seeds give different patterns. */
static uint32_t pattern_value(uint32_t addr, uint32_t seed)
{
    uint32_t x = addr ^ (seed * 0x9E3779B9u) ^ 0x5BD1E995u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return x;
}

static int pattern_args(char **argv, uint32_t *start, uint32_t *len, uint32_t *seed)
{
    if (!arg_u32("START", argv[2], start) || !arg_u32("LEN", argv[3], len) || !arg_u32("SEED", argv[4], seed))
        return 0;
    if ((*start | *len) & 3 || *len == 0) {
        error("START and LEN must be multiples of 4 and LEN at least 4");
        return 0;
    }
    return 1;
}

static int pattern_range_ok(const char *what, uint32_t start, uint32_t len, enum mem_check r)
{
    if (r == MEM_OK)
        return 1;
    print("error: pattern ");
    print(what);
    print(" ");
    print_hex(start, 8);
    print("+");
    print_hex(len, 8);
    print(": ");
    println(mem_check_message(r));
    return 0;
}

static void pattern_write(uint32_t start, uint32_t len, uint32_t seed)
{
    uint32_t a;
    for (a = start; a - start < len; a += 4)
        *(volatile uint32_t *)a = pattern_value(a, seed);
}

/* 1 if [start, start+len) holds seed's pattern; else prints the first wrong
 * word ("pattern: FAIL at ...") and returns 0. */
static int pattern_verify(uint32_t start, uint32_t len, uint32_t seed)
{
    uint32_t a;
    for (a = start; a - start < len; a += 4) {
        uint32_t got = *(volatile uint32_t *)a, exp = pattern_value(a, seed);
        if (got != exp) {
            print("pattern: FAIL at ");
            print_hex(a, 8);
            print(" expected ");
            print_hex(exp, 8);
            print(" got ");
            print_hex(got, 8);
            print(" seed ");
            print_dec(seed);
            print_nl();
            return 0;
        }
    }
    return 1;
}

/* Fill with SEED, then until a key arrives: verify the last seed's pattern
 * and fill with the next seed. The key is only looked at between passes, so
 * the range always ends holding the whole pattern of the last seed printed.
 * Every pass rewrites every page, so a migration that loses or reorders a
 * page the guest dirtied fails the next verify (on the destination). */
static void pattern_loop(uint32_t start, uint32_t len, uint32_t seed)
{
    uint32_t passes = 1;
    pattern_write(start, len, seed);
    println("pattern: looping, any key stops");
    while (!serial_ready()) {
        if (!pattern_verify(start, len, seed))
            return;
        pattern_write(start, len, ++seed);
        passes++;
    }
    (void)serial_getc();
    print("pattern: loop stopped after ");
    print_dec(passes);
    print(" passes, last seed ");
    print_dec(seed);
    println(", every pass verified");
}

void cmd_pattern(int argc, char **argv)
{
    uint32_t start, len, seed;
    (void)argc;
    int fill = str_eq(argv[1], "fill"), loop = str_eq(argv[1], "loop");
    if (!fill && !loop && !str_eq(argv[1], "check")) {
        error("usage: pattern fill|check|loop START LEN SEED");
        return;
    }
    if (!pattern_args(argv, &start, &len, &seed))
        return;
    if (fill || loop) {
        if (!pattern_range_ok(argv[1], start, len, mem_check_writable(start, len)))
            return;
        if (loop) {
            pattern_loop(start, len, seed);
            return;
        }
        pattern_write(start, len, seed);
        print("pattern: ");
        print_dec(len);
        println(" bytes written");
        return;
    }
    if (!pattern_range_ok("check", start, len, mem_check_ram(start, len)))
        return;
    if (!pattern_verify(start, len, seed))
        return;
    print("pattern: ");
    print_dec(len);
    println(" bytes ok");
}
