/* Command handlers and the command table. Handlers print their result, or one
 * "error: ..." line naming the problem; the shell prints the next prompt. */
#include <stdint.h>
#include "bootinfo.h"
#include "commands.h"
#include "io.h"
#include "mem.h"
#include "print.h"
#include "util.h"

#define DEBUG_EXIT_PORT 0xf4

void error(const char *msg)
{
    print("error: ");
    println(msg);
}

/* Parses argument `s` for parameter `what`; prints an error and returns 0 on
 * failure. */
int arg_u32(const char *what, const char *s, uint32_t *out)
{
    const char *why;
    switch (parse_u32(s, out)) {
    case PARSE_OK:
        return 1;
    case PARSE_OVERFLOW:
        why = "does not fit in 32 bits";
        break;
    default:
        why = "not a number (use decimal or 0x-hex)";
        break;
    }
    print("error: bad ");
    print(what);
    print(" '");
    print(s);
    print("': ");
    println(why);
    return 0;
}

/* WIDTH argument: 1, 2 or 4 bytes. */
int arg_width(const char *s, uint32_t *out)
{
    if (!arg_u32("WIDTH", s, out))
        return 0;
    if (*out != 1 && *out != 2 && *out != 4) {
        print("error: bad WIDTH '");
        print(s);
        println("': must be 1, 2 or 4");
        return 0;
    }
    return 1;
}

/* VALUE argument that must fit in `width` bytes. */
int arg_value(const char *s, uint32_t width, uint32_t *out)
{
    if (!arg_u32("VALUE", s, out))
        return 0;
    if (width < 4 && *out >> (width * 8)) {
        print("error: bad VALUE '");
        print(s);
        print("': does not fit in ");
        print_dec(width);
        println(width == 1 ? " byte" : " bytes");
        return 0;
    }
    return 1;
}

static int arg_port(const char *s, uint32_t *out)
{
    if (!arg_u32("PORT", s, out))
        return 0;
    if (*out > 0xffff) {
        print("error: bad PORT '");
        print(s);
        println("': must be 0..0xffff");
        return 0;
    }
    return 1;
}

static void mem_error(const char *what, uint32_t addr, uint32_t len, enum mem_check r)
{
    print("error: ");
    print(what);
    print(" ");
    print_hex(addr, 8);
    print("+");
    print_hex(len, 8);
    print(": ");
    println(mem_check_message(r));
}

/* ---- commands ---- */

static void cmd_help(int argc, char **argv);

static void cmd_echo(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (i > 1)
            print(" ");
        print(argv[i]);
    }
    print_nl();
}

static void cmd_cpuid(int argc, char **argv)
{
    uint32_t leaf, sub = 0, r[4];
    if (!arg_u32("LEAF", argv[1], &leaf))
        return;
    if (argc > 2 && !arg_u32("SUBLEAF", argv[2], &sub))
        return;
    cpuid(leaf, sub, r);
    print("eax=");
    print_hex_raw(r[0], 8);
    print(" ebx=");
    print_hex_raw(r[1], 8);
    print(" ecx=");
    print_hex_raw(r[2], 8);
    print(" edx=");
    print_hex_raw(r[3], 8);
    print_nl();
}

static void cmd_peek(int argc, char **argv)
{
    uint32_t addr, width = 4, v;
    if (!arg_u32("ADDR", argv[1], &addr))
        return;
    if (argc > 2 && !arg_width(argv[2], &width))
        return;
    enum mem_check r = mem_check_ram(addr, width);
    if (r != MEM_OK) {
        mem_error("peek", addr, width, r);
        return;
    }
    /* volatile: the read must happen, at exactly this width */
    if (width == 1)
        v = *(volatile uint8_t *)addr;
    else if (width == 2)
        v = *(volatile uint16_t *)addr;
    else
        v = *(volatile uint32_t *)addr;
    print_hex(addr, 8);
    print(": ");
    print_hex(v, (int)width * 2);
    print_nl();
}

static void cmd_poke(int argc, char **argv)
{
    uint32_t addr, width = 4, v;
    if (!arg_u32("ADDR", argv[1], &addr))
        return;
    if (argc > 3 && !arg_width(argv[3], &width))
        return;
    if (!arg_value(argv[2], width, &v))
        return;
    /* Writing into our own code/data/stack would crash the shell. */
    enum mem_check r = mem_check_writable(addr, width);
    if (r != MEM_OK) {
        mem_error("poke", addr, width, r);
        return;
    }
    if (width == 1)
        *(volatile uint8_t *)addr = (uint8_t)v;
    else if (width == 2)
        *(volatile uint16_t *)addr = (uint16_t)v;
    else
        *(volatile uint32_t *)addr = v;
    println("ok");
}

/* The pattern for the aligned word at `a`: the address itself mixed so that
 * neighbouring words, and words 2^k apart (address-line faults), differ. */
static uint32_t pattern_word(uint32_t a)
{
    uint32_t x = a ^ 0xA5C3F00Fu;
    return x ^ (x << 13) ^ (x >> 7);
}

static uint8_t pattern_byte(uint32_t a, uint32_t invert)
{
    return (uint8_t)((pattern_word(a & ~3u) ^ invert) >> ((a & 3) * 8));
}

static void memtest_fail(uint32_t addr, uint32_t expected, uint32_t got, int digits)
{
    print("memtest: FAIL at ");
    print_hex(addr, 8);
    print(" expected ");
    print_hex(expected, digits);
    print(" got ");
    print_hex(got, digits);
    print_nl();
}

/* One pass: write the (optionally inverted) pattern over [start, end), then
 * read it back. Bytes at unaligned edges, whole words in between. Returns 0
 * on success. */
static int memtest_pass(uint32_t start, uint32_t end, uint32_t invert)
{
    uint32_t wstart = (start + 3) & ~3u;
    uint32_t wend = end & ~3u;
    uint32_t a;

    if (wstart > wend)                 /* range within one word */
        wstart = wend = end;
    for (a = start; a < wstart; a++)
        *(volatile uint8_t *)a = pattern_byte(a, invert);
    for (a = wstart; a < wend; a += 4)
        *(volatile uint32_t *)a = pattern_word(a) ^ invert;
    for (a = wend; a < end; a++)
        *(volatile uint8_t *)a = pattern_byte(a, invert);

    for (a = start; a < wstart; a++) {
        uint8_t got = *(volatile uint8_t *)a, exp = pattern_byte(a, invert);
        if (got != exp) {
            memtest_fail(a, exp, got, 2);
            return -1;
        }
    }
    for (a = wstart; a < wend; a += 4) {
        uint32_t got = *(volatile uint32_t *)a, exp = pattern_word(a) ^ invert;
        if (got != exp) {
            memtest_fail(a, exp, got, 8);
            return -1;
        }
    }
    for (a = wend; a < end; a++) {
        uint8_t got = *(volatile uint8_t *)a, exp = pattern_byte(a, invert);
        if (got != exp) {
            memtest_fail(a, exp, got, 2);
            return -1;
        }
    }
    return 0;
}

static void cmd_memtest(int argc, char **argv)
{
    uint32_t start, len;
    (void)argc;
    if (!arg_u32("START", argv[1], &start) || !arg_u32("LEN", argv[2], &len))
        return;
    if (len == 0) {
        error("bad LEN '0': must be at least 1");
        return;
    }
    enum mem_check r = mem_check_writable(start, len);
    if (r != MEM_OK) {
        mem_error("memtest", start, len, r);
        return;
    }
    /* The pattern, then its complement, so every bit is seen both ways. The
     * range is in RAM, so start + len does not wrap. */
    if (memtest_pass(start, start + len, 0) || memtest_pass(start, start + len, 0xFFFFFFFFu))
        return;
    print("memtest: ");
    print_dec(len);
    println(" bytes ok");
}

static void port_in(char **argv, int width)
{
    uint32_t port, v;
    if (!arg_port(argv[1], &port))
        return;
    if (width == 1)
        v = inb((uint16_t)port);
    else if (width == 2)
        v = inw((uint16_t)port);
    else
        v = inl((uint16_t)port);
    print_hex(port, 4);
    print(": ");
    print_hex(v, width * 2);
    print_nl();
}

static void port_out(char **argv, int width)
{
    uint32_t port, v;
    if (!arg_port(argv[1], &port) || !arg_value(argv[2], (uint32_t)width, &v))
        return;
    if (width == 1)
        outb((uint16_t)port, (uint8_t)v);
    else if (width == 2)
        outw((uint16_t)port, (uint16_t)v);
    else
        outl((uint16_t)port, v);
    println("ok");
}

static void cmd_inb(int argc, char **argv) { (void)argc; port_in(argv, 1); }
static void cmd_inw(int argc, char **argv) { (void)argc; port_in(argv, 2); }
static void cmd_inl(int argc, char **argv) { (void)argc; port_in(argv, 4); }
static void cmd_outb(int argc, char **argv) { (void)argc; port_out(argv, 1); }
static void cmd_outw(int argc, char **argv) { (void)argc; port_out(argv, 2); }
static void cmd_outl(int argc, char **argv) { (void)argc; port_out(argv, 4); }

static void cmd_exit(int argc, char **argv)
{
    uint32_t n = 0;
    if (argc > 1 && !arg_u32("N", argv[1], &n))
        return;
    /* isa-debug-exit: the VMM exits with status (n << 1) | 1. A 32-bit write
     * matches the device's 4-byte port (iosize=0x04). */
    outl(DEBUG_EXIT_PORT, n);
    error("debug-exit device did not respond");
}

static void cmd_info(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    print("multiboot: ");
    println(bootinfo.multiboot ? "yes" : "no");
    print("flags=");
    print_hex(bootinfo.flags, 8);
    print(" info=");
    print_hex(bootinfo.info_addr, 8);
    print_nl();
    print("cmdline=");
    println(bootinfo.have_cmdline ? bootinfo.cmdline : "(none)");
    print("loader=");
    println(bootinfo.have_loader ? bootinfo.loader : "(none)");
    if (bootinfo.have_mem) {
        print("mem_lower=");
        print_dec(bootinfo.mem_lower);
        print("K mem_upper=");
        print_dec(bootinfo.mem_upper);
        println("K");
    } else {
        println("mem: no memory sizes from the boot loader");
    }
    print("image=");
    print_hex(mem_image_start(), 8);
    print("-");
    print_hex(mem_image_end(), 8);
    print(" stack=");
    print_hex(mem_stack_bottom(), 8);
    print("-");
    print_hex(mem_stack_top(), 8);
    print_nl();
    /* Where devices read and write: virtqueue rings and request buffers,
     * and the pages lent to virtio-balloon. Both inside the image. */
    print("dma=");
    print_hex(mem_dma_start(), 8);
    print("-");
    print_hex(mem_dma_end(), 8);
    print(" balloon=");
    print_hex(mem_balloon_start(), 8);
    print("-");
    print_hex(mem_balloon_end(), 8);
    print_nl();
}

static const struct command command_table[] = {
    { "help",    "",                    "list commands",                              0, 0, cmd_help },
    { "echo",    "ARGS...",             "print the arguments",                        0, -1, cmd_echo },
    { "info",    "",                    "show Multiboot flags, cmdline, memory, image", 0, 0, cmd_info },
    { "cpuid",   "LEAF [SUBLEAF]",      "run CPUID and print eax ebx ecx edx",        1, 2, cmd_cpuid },
    { "peek",    "ADDR [WIDTH]",        "read 1/2/4 bytes (default 4) of RAM",        1, 2, cmd_peek },
    { "poke",    "ADDR VALUE [WIDTH]",  "write 1/2/4 bytes (default 4) of RAM",       2, 3, cmd_poke },
    { "memtest", "START LEN",           "write an address pattern, read it back",     2, 2, cmd_memtest },
    { "pattern", "fill|check|loop START LEN SEED", "write / verify / keep rewriting a seeded pattern", 4, 4, cmd_pattern },
    { "inb",     "PORT",                "read a byte from an I/O port",               1, 1, cmd_inb },
    { "inw",     "PORT",                "read a word from an I/O port",               1, 1, cmd_inw },
    { "inl",     "PORT",                "read a dword from an I/O port",              1, 1, cmd_inl },
    { "outb",    "PORT VALUE",          "write a byte to an I/O port",                2, 2, cmd_outb },
    { "outw",    "PORT VALUE",          "write a word to an I/O port",                2, 2, cmd_outw },
    { "outl",    "PORT VALUE",          "write a dword to an I/O port",               2, 2, cmd_outl },
    { "lspci",   "",                    "list bus 0 functions, BARs, capabilities",   0, 0, cmd_lspci },
    { "pciassign", "",                  "assign BARs (io 0xc000+, mem 0xe0000000+)",  0, 0, cmd_pciassign },
    { "pcicfg",  "read|write B:D.F OFF [VALUE] [WIDTH]", "config space access",       3, 5, cmd_pcicfg },
    { "virtio",  "list",                "list virtio devices",                        1, 1, cmd_virtio },
    { "blk",     "info|read S|write S PAT|flush|id|use N|bench N SIZE", "virtio-blk requests", 1, 3, cmd_blk },
    { "rng",     "read N",              "N (<=64) bytes from virtio-rng",             2, 2, cmd_rng },
    { "console", "echo TEXT...|read",   "virtio-console send / receive",              1, -1, cmd_console },
    { "balloon", "inflate N|deflate N|info", "virtio-balloon pages",                  1, 2, cmd_balloon },
    { "acpi",    "",                    "find RSDP/FADT/MADT/DSDT, print PM1a blocks, \\_S5, APICs", 0, 0, cmd_acpi },
    { "poweroff", "",                   "power off through ACPI S5 (PM1a_CNT SLP_TYP|SLP_EN)", 0, 0, cmd_poweroff },
    { "pwrbtn",  "",                    "wait for the ACPI power button, then power off", 0, 0, cmd_pwrbtn },
    { "exit",    "[N]",                 "leave via isa-debug-exit (status (N<<1)|1)", 0, 1, cmd_exit },
};

#define N_COMMANDS (sizeof(command_table) / sizeof(command_table[0]))

const struct command *command_find(const char *name)
{
    for (unsigned i = 0; i < N_COMMANDS; i++)
        if (str_eq(command_table[i].name, name))
            return &command_table[i];
    return 0;
}

void command_usage_error(const struct command *c)
{
    print("error: usage: ");
    print(c->name);
    if (c->usage[0]) {
        print(" ");
        print(c->usage);
    }
    print_nl();
}

static void cmd_help(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    for (unsigned i = 0; i < N_COMMANDS; i++) {
        const struct command *c = &command_table[i];
        /* pad "name usage" to a fixed column so the descriptions line up */
        unsigned n = str_len(c->name) + (c->usage[0] ? 1 + str_len(c->usage) : 0);
        print("  ");
        print(c->name);
        if (c->usage[0]) {
            print(" ");
            print(c->usage);
        }
        do
            print(" ");
        while (++n < 24);
        println(c->help);
    }
    println("numbers: decimal or 0x-hex");
}
