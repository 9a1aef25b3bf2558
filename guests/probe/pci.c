/* PCI on bus 0 through configuration mechanism #1: config access,
 * enumeration, BAR sizing and assignment (pciassign), capability walks. */
#include "pci.h"
#include "bootinfo.h"
#include "commands.h"
#include "io.h"
#include "print.h"
#include "util.h"

#define CFG_ADDR 0xcf8
#define CFG_DATA 0xcfc

/* BIOS-like windows: I/O above the legacy ISA/PIIX ports, memory above any
 * RAM we could be given (<= 3.5 GiB) and below the IOAPIC at 0xfec00000. */
#define IO_WINDOW_START  0xc000u
#define IO_WINDOW_END    0x10000u
#define MEM_WINDOW_START 0xe0000000u
#define MEM_WINDOW_END   0xfec00000u

static void cfg_select(pci_bdf bdf, uint32_t off)
{
    outl(CFG_ADDR, 0x80000000u | ((uint32_t)bdf << 8) | (off & 0xfc));
}

uint32_t pci_read32(pci_bdf bdf, uint32_t off)
{
    cfg_select(bdf, off);
    return inl(CFG_DATA);
}

/* Narrow accesses go to CFC + (off & 3) so the device sees the true width
 * (some registers have side effects per byte). */
uint32_t pci_read(pci_bdf bdf, uint32_t off, uint32_t width)
{
    cfg_select(bdf, off);
    if (width == 1)
        return inb((uint16_t)(CFG_DATA + (off & 3)));
    if (width == 2)
        return inw((uint16_t)(CFG_DATA + (off & 2)));
    return inl(CFG_DATA);
}

void pci_write(pci_bdf bdf, uint32_t off, uint32_t value, uint32_t width)
{
    cfg_select(bdf, off);
    if (width == 1)
        outb((uint16_t)(CFG_DATA + (off & 3)), (uint8_t)value);
    else if (width == 2)
        outw((uint16_t)(CFG_DATA + (off & 2)), (uint16_t)value);
    else
        outl(CFG_DATA, value);
}

void print_bdf(pci_bdf bdf)
{
    print_hex_raw(PCI_BUS(bdf), 2);
    print(":");
    print_hex_raw(PCI_DEV(bdf), 2);
    print(".");
    print_hex_raw(PCI_FN(bdf), 1);
}

/* Functions 1..7 are only looked at when function 0 sets the multi-function
 * bit: single-function devices may decode all eight function numbers. The
 * flag is per device, so iterations must not nest. */
static int cur_multifunction;

int pci_next(pci_bdf *bdf)
{
    uint32_t dev = 0, fn = 0;
    if (*bdf != PCI_ITER_START) {
        dev = PCI_DEV(*bdf);
        fn = PCI_FN(*bdf) + 1;
        if (fn == 8 || !cur_multifunction) {
            dev++;
            fn = 0;
        }
    }
    for (; dev < 32; dev++, fn = 0) {
        for (; fn < 8; fn++) {
            pci_bdf x = PCI_BDF(0, dev, fn);
            uint32_t vendor = pci_read(x, PCI_VENDOR, 2);
            /* 0xffff: nothing answered; 0x0000 is no valid vendor either
             * (and what a bus without a host bridge might return). */
            if (vendor == 0xffff || vendor == 0) {
                if (fn == 0)
                    break;       /* no device here */
                continue;
            }
            if (fn == 0)
                cur_multifunction = (pci_read(x, PCI_HEADER, 1) & 0x80) != 0;
            *bdf = x;
            return 1;
        }
    }
    return 0;
}

int pci_bar_count(pci_bdf bdf)
{
    uint32_t type = pci_read(bdf, PCI_HEADER, 1) & 0x7f;
    return type == 0 ? 6 : type == 1 ? 2 : 0;
}

int pci_probe_bars(pci_bdf bdf, struct pci_bar bars[6])
{
    int n = pci_bar_count(bdf);
    uint32_t cmd = pci_read(bdf, PCI_COMMAND, 2);

    memset(bars, 0, 6 * sizeof(bars[0]));
    /* Decoding off while a BAR holds all ones, so the device does not claim
     * a bogus window at the top of the address space meanwhile. */
    if (cmd & (PCI_CMD_IO | PCI_CMD_MEM))
        pci_write(bdf, PCI_COMMAND, cmd & ~(uint32_t)(PCI_CMD_IO | PCI_CMD_MEM), 2);
    for (int i = 0; i < n; i++) {
        uint32_t off = PCI_BAR0 + 4 * (uint32_t)i;
        struct pci_bar *b = &bars[i];
        uint32_t orig = pci_read32(bdf, off);
        pci_write(bdf, off, 0xffffffffu, 4);
        uint32_t sized = pci_read32(bdf, off);
        pci_write(bdf, off, orig, 4);
        if (sized == 0)
            continue;                          /* unimplemented BAR */
        if (sized & 1) {
            uint32_t m = sized & ~3u;
            if (!(m & 0xffff0000u))
                m |= 0xffff0000u;              /* 16-bit I/O decoder */
            b->kind = BAR_IO;
            b->size = ~m + 1;
            b->addr = orig & ~3u;
            continue;
        }
        b->prefetch = (sized >> 3) & 1;
        b->addr = orig & ~0xfu;
        uint32_t m = sized & ~0xfu;
        if (((sized >> 1) & 3) == 2 && i + 1 < n) {
            uint32_t orig_hi = pci_read32(bdf, off + 4);
            pci_write(bdf, off + 4, 0xffffffffu, 4);
            uint32_t hi = pci_read32(bdf, off + 4);
            pci_write(bdf, off + 4, orig_hi, 4);
            b->kind = BAR_MEM64;
            b->addr_hi = orig_hi;
            if (hi != 0xffffffffu || m == 0)
                b->size_above_4g = 1;
            else
                b->size = ~m + 1;
            i++;                               /* the upper half is not a BAR */
            continue;
        }
        b->kind = BAR_MEM32;
        b->size = m ? ~m + 1 : 0;
        if (!m)
            b->kind = BAR_NONE;
    }
    if (cmd & (PCI_CMD_IO | PCI_CMD_MEM))
        pci_write(bdf, PCI_COMMAND, cmd, 2);
    return n;
}

uint32_t pci_cap_next(pci_bdf bdf, uint32_t pos, int *count)
{
    uint32_t next;
    if (pos == 0) {
        *count = 0;
        if (!(pci_read(bdf, PCI_STATUS, 2) & 0x10))   /* no capability list */
            return 0;
        next = pci_read(bdf, PCI_CAP_PTR, 1);
    } else {
        next = pci_read(bdf, pos + 1, 1);
    }
    next &= 0xfc;                /* the low two bits are reserved */
    if (next < 0x40 || ++*count > PCI_CAP_MAX)
        return 0;
    return next;
}

void pci_print_bar_kind(const struct pci_bar *b)
{
    print(b->kind == BAR_IO ? "io" : b->kind == BAR_MEM32 ? "mem32" : "mem64");
    if (b->prefetch)
        print(" pref");
}

/* ---- BAR assignment ---- */

static int assigned;
uint32_t pci_generation;

static uint32_t align_up(uint32_t v, uint32_t a)
{
    return (v + a - 1) & ~(a - 1);
}

/* Start of the memory window: 0xe0000000, or above RAM if the loader
 * reported RAM reaching into it (then 16 MiB aligned). */
static uint32_t mem_window_start(void)
{
    if (!bootinfo.have_mem)
        return MEM_WINDOW_START;
    uint64_t ram_end = 0x100000ull + (uint64_t)bootinfo.mem_upper * 1024;
    if (ram_end <= MEM_WINDOW_START)
        return MEM_WINDOW_START;
    ram_end = (ram_end + 0xffffff) & ~0xffffffull;
    return ram_end < MEM_WINDOW_END ? (uint32_t)ram_end : MEM_WINDOW_END;
}

int pci_assign(int verbose)
{
    uint32_t mem_start = mem_window_start();
    uint32_t io_next = IO_WINDOW_START, mem_next = mem_start;
    int failed = 0, nbars = 0;
    pci_bdf bdf = PCI_ITER_START;
    struct pci_bar bars[6];

    while (pci_next(&bdf)) {
        int n = pci_probe_bars(bdf, bars);
        uint32_t enable = 0;
        uint32_t cmd = pci_read(bdf, PCI_COMMAND, 2);
        if (cmd & (PCI_CMD_IO | PCI_CMD_MEM))   /* no decoding while BARs move */
            pci_write(bdf, PCI_COMMAND, cmd & ~(uint32_t)(PCI_CMD_IO | PCI_CMD_MEM), 2);
        for (int i = 0; i < n; i++) {
            struct pci_bar *b = &bars[i];
            uint32_t off = PCI_BAR0 + 4 * (uint32_t)i, base;
            if (b->kind == BAR_NONE)
                continue;
            if (b->size_above_4g) {
                failed = 1;
                print_bdf(bdf);
                print(" bar");
                print_dec((uint32_t)i);
                println(": error: size >= 4 GiB, not assigned");
                continue;
            }
            if (b->kind == BAR_IO) {
                base = align_up(io_next, b->size);
                if (base < io_next || base + b->size > IO_WINDOW_END || base + b->size < base) {
                    failed = 1;
                    print_bdf(bdf);
                    println(": error: I/O window exhausted");
                    continue;
                }
                io_next = base + b->size;
                pci_write(bdf, off, base, 4);
                enable |= PCI_CMD_IO;
            } else {
                base = align_up(mem_next, b->size);
                if (base < mem_next || base + b->size > MEM_WINDOW_END || base + b->size < base) {
                    failed = 1;
                    print_bdf(bdf);
                    println(": error: memory window exhausted");
                    continue;
                }
                mem_next = base + b->size;
                /* 64-bit BARs go below 4 GiB too: paging is off, so the
                 * probe can only reach 32-bit physical addresses. Low
                 * half first, then the high half. */
                pci_write(bdf, off, base, 4);
                if (b->kind == BAR_MEM64)
                    pci_write(bdf, off + 4, 0, 4);
                enable |= PCI_CMD_MEM;
            }
            nbars++;
            if (verbose) {
                print_bdf(bdf);
                print(" bar");
                print_dec((uint32_t)i);
                print(" ");
                pci_print_bar_kind(b);
                print(" ");
                print_hex(base, b->kind == BAR_IO ? 4 : 8);
                print(" size ");
                print_hex_min(b->size);
                print_nl();
            }
        }
        if (enable) {
            /* Exactly these bits, as after reset: firmware leftovers (QEMU's
             * SeaBIOS sets SERR#) would make the output differ between VMMs. */
            cmd = enable | PCI_CMD_MASTER;
            pci_write(bdf, PCI_COMMAND, cmd, 2);
            if (verbose) {
                print_bdf(bdf);
                print(" command ");
                print_hex(pci_read(bdf, PCI_COMMAND, 2), 4);
                print_nl();
            }
        } else if (cmd & (PCI_CMD_IO | PCI_CMD_MEM)) {
            pci_write(bdf, PCI_COMMAND, cmd, 2);   /* nothing assigned: as it was */
        }
    }
    if (verbose) {
        print("pciassign: ");
        print_dec((uint32_t)nbars);
        /* inclusive ranges of what was handed out */
        print(" bars, io ");
        if (io_next > IO_WINDOW_START) {
            print_hex(IO_WINDOW_START, 4);
            print("-");
            print_hex(io_next - 1, 4);
        } else {
            print("none");
        }
        print(" mem ");
        if (mem_next > mem_start) {
            print_hex(mem_start, 8);
            print("-");
            print_hex(mem_next - 1, 8);
        } else {
            print("none");
        }
        print_nl();
    }
    assigned = !failed;
    pci_generation++;
    return failed ? -1 : 0;
}

void pci_ensure_assigned(void)
{
    if (!assigned)
        pci_assign(0);
}

void cmd_pciassign(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    pci_assign(1);
}
