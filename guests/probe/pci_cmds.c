/* The lspci and pcicfg commands. */
#include "commands.h"
#include "pci.h"
#include "print.h"
#include "util.h"

static const char *cap_name(uint32_t id)
{
    switch (id) {
    case 0x01: return "pm";
    case 0x05: return "msi";
    case 0x09: return "vendor";
    case 0x0d: return "ssvid";
    case 0x10: return "pcie";
    case 0x11: return "msix";
    case 0x12: return "sata";
    case 0x13: return "af";
    default: return "other";
    }
}

static void lspci_caps(pci_bdf bdf, uint32_t vendor)
{
    int count;
    for (uint32_t pos = pci_cap_next(bdf, 0, &count); pos; pos = pci_cap_next(bdf, pos, &count)) {
        uint32_t hdr = pci_read32(bdf, pos);
        uint32_t id = hdr & 0xff;
        print("    cap ");
        print_hex(id, 2);
        print(" ");
        print(cap_name(id));
        print(" @");
        print_hex(pos, 2);
        if (id == 0x09 && vendor == 0x1af4) {
            /* virtio_pci_cap: cfg_type, bar, offset, length (+ multiplier) */
            uint32_t cfg_type = (hdr >> 24) & 0xff;
            uint32_t bar = pci_read32(bdf, pos + 4) & 0xff;
            print(" virtio cfg_type ");
            print_dec(cfg_type);
            print(" bar ");
            print_dec(bar);
            print(" off ");
            print_hex_min(pci_read32(bdf, pos + 8));
            print(" len ");
            print_hex_min(pci_read32(bdf, pos + 12));
            if (cfg_type == 2) {
                print(" mult ");
                print_dec(pci_read32(bdf, pos + 16));
            }
        } else if (id == 0x11) {
            uint32_t ctl = hdr >> 16;
            uint32_t table = pci_read32(bdf, pos + 4);
            uint32_t pba = pci_read32(bdf, pos + 8);
            print(" vectors ");
            print_dec((ctl & 0x7ff) + 1);
            print(" table bar ");
            print_dec(table & 7);
            print(" +");
            print_hex_min(table & ~7u);
            print(" pba bar ");
            print_dec(pba & 7);
            print(" +");
            print_hex_min(pba & ~7u);
        }
        print_nl();
    }
}

void cmd_lspci(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    pci_bdf bdf = PCI_ITER_START;
    struct pci_bar bars[6];
    int found = 0;
    while (pci_next(&bdf)) {
        uint32_t id = pci_read32(bdf, PCI_VENDOR);
        uint32_t cr = pci_read32(bdf, PCI_REVISION);
        uint32_t type = pci_read(bdf, PCI_HEADER, 1) & 0x7f;
        found++;
        print_bdf(bdf);
        print(" ");
        print_hex_raw(id & 0xffff, 4);
        print(":");
        print_hex_raw(id >> 16, 4);
        print(" class ");
        print_hex_raw(cr >> 8, 6);
        print(" rev ");
        print_hex_raw(cr & 0xff, 2);
        if (type == 0) {
            uint32_t ss = pci_read32(bdf, PCI_SUBSYS_VID);
            print(" subsys ");
            print_hex_raw(ss & 0xffff, 4);
            print(":");
            print_hex_raw(ss >> 16, 4);
        } else {
            print(" header ");
            print_dec(type);
        }
        print(" irq-pin ");
        print_dec(pci_read(bdf, PCI_INT_PIN, 1));
        print_nl();
        int n = pci_probe_bars(bdf, bars);
        for (int i = 0; i < n; i++) {
            if (bars[i].kind == BAR_NONE)
                continue;
            print("    bar");
            print_dec((uint32_t)i);
            print(" ");
            pci_print_bar_kind(&bars[i]);
            print(" size ");
            if (bars[i].size_above_4g)
                print(">=4G");
            else
                print_hex_min(bars[i].size);
            print_nl();
        }
        lspci_caps(bdf, id & 0xffff);
    }
    if (!found)
        println("lspci: no PCI functions on bus 0");
}

/* ---- pcicfg ---- */

static int parse_hex_field(const char **s, uint32_t max, uint32_t *out)
{
    uint32_t v = 0;
    int n = 0;
    for (;; (*s)++, n++) {
        char c = **s;
        int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
              : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
        if (d < 0)
            break;
        v = v * 16 + (uint32_t)d;
        if (v > max)
            return 0;
    }
    *out = v;
    return n > 0;
}

/* "BB:DD.F" (hex bus and device, function 0-7); the bus may be left out. */
static int arg_bdf(const char *s, pci_bdf *out)
{
    const char *p = s;
    uint32_t a, b = 0, d, f;
    if (!parse_hex_field(&p, 0xff, &a))
        goto bad;
    if (*p == ':') {
        p++;
        b = a;
        if (!parse_hex_field(&p, 0x1f, &d))
            goto bad;
    } else {
        d = a;
        if (d > 0x1f)
            goto bad;
    }
    if (*p++ != '.' || *p < '0' || *p > '7' || p[1])
        goto bad;
    f = (uint32_t)(*p - '0');
    *out = PCI_BDF(b, d, f);
    return 1;
bad:
    print("error: bad B:D.F '");
    print(s);
    println("': use e.g. 00:02.0");
    return 0;
}

void cmd_pcicfg(int argc, char **argv)
{
    pci_bdf bdf;
    uint32_t off, width = 4, value = 0;
    int write;
    if (str_eq(argv[1], "read"))
        write = 0;
    else if (str_eq(argv[1], "write"))
        write = 1;
    else {
        error("usage: pcicfg read B:D.F OFFSET [WIDTH] | pcicfg write B:D.F OFFSET VALUE [WIDTH]");
        return;
    }
    if (argc < (write ? 5 : 4) || argc > (write ? 6 : 5)) {
        error(write ? "usage: pcicfg write B:D.F OFFSET VALUE [WIDTH]" : "usage: pcicfg read B:D.F OFFSET [WIDTH]");
        return;
    }
    if (!arg_bdf(argv[2], &bdf) || !arg_u32("OFFSET", argv[3], &off))
        return;
    if (argc > (write ? 5 : 4) && !arg_width(argv[write ? 5 : 4], &width))
        return;
    if (off > 0xff || (off & (width - 1))) {
        print("error: bad OFFSET '");
        print(argv[3]);
        println("': must be 0..0xff and aligned to WIDTH");
        return;
    }
    if (write) {
        if (!arg_value(argv[4], width, &value))
            return;
        pci_write(bdf, off, value, width);
        if (off < 0x28)
            pci_generation++;
        println("ok");
        return;
    }
    value = pci_read(bdf, off, width);
    print_bdf(bdf);
    print("@");
    print_hex(off, 2);
    print(": ");
    print_hex(value, (int)width * 2);
    print_nl();
}
