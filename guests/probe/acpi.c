/* ACPI discovery and power: find the RSDP where ACPI says an OS searches
 * (the EBDA's first KiB, then 0xE0000-0xFFFFF on 16-byte boundaries), walk
 * RSDT to FADT and MADT, read the PM1a blocks and \_S5's SLP_TYP from the
 * DSDT, then power off through PM1a_CNT or wait for the power button.
 * Same code on refvm (tables written by the VMM) and QEMU (SeaBIOS). Every
 * length read from a table is bounded before it is used. */
#include <stdint.h>
#include "commands.h"
#include "io.h"
#include "print.h"
#include "util.h"

#define PWRBTN_STS (1u << 8)
#define PWRBTN_EN  (1u << 8)
#define SLP_EN     (1u << 13)
#define MAX_TABLE  (1u << 20)   /* no table of ours or SeaBIOS's is near this */

struct acpi_info {
    uint32_t rsdp, rsdt, fadt, madt, dsdt;
    uint32_t pm1a_evt, pm1a_cnt, sci;
    uint32_t pm1_evt_len;
    int s5;                     /* SLP_TYP of \_S5, -1 if not found */
    uint32_t lapics, ioapic;
};

static uint8_t sum8(const uint8_t *p, uint32_t n)
{
    uint8_t s = 0;
    while (n--)
        s += *p++;
    return s;
}

static uint32_t rd32(uint32_t addr) { return *(volatile uint32_t *)addr; }

static uint32_t scan_rsdp(uint32_t start, uint32_t end)
{
    for (uint32_t a = start; a + 20 <= end; a += 16)
        if (!memcmp((const void *)a, "RSD PTR ", 8) && sum8((const uint8_t *)a, 20) == 0)
            return a;
    return 0;
}

/* An SDT at `addr` with signature `sig` and a valid checksum, else 0. */
static uint32_t check_sdt(uint32_t addr, const char *sig)
{
    if (!addr || memcmp((const void *)addr, sig, 4))
        return 0;
    uint32_t len = rd32(addr + 4);
    if (len < 36 || len > MAX_TABLE || sum8((const uint8_t *)addr, len))
        return 0;
    return addr;
}

/* SLP_TYPa of \_S5: NameOp "_S5_" PackageOp PkgLength NumElements elem0. */
static int find_s5(uint32_t dsdt)
{
    uint32_t len = rd32(dsdt + 4);
    const uint8_t *p = (const uint8_t *)dsdt;
    for (uint32_t i = 36; i + 8 < len; i++) {
        if (memcmp(p + i, "_S5_", 4) || p[i + 4] != 0x12)
            continue;
        uint32_t j = i + 5;
        j += ((p[j] >> 6) & 3) + 1;     /* PkgLength: lead byte + follow bytes */
        j += 1;                         /* NumElements */
        if (j >= len)
            return -1;
        if (p[j] == 0x0a && j + 1 < len)  /* BytePrefix */
            return p[j + 1];
        if (p[j] == 0x00 || p[j] == 0x01)  /* ZeroOp, OneOp */
            return p[j];
        return -1;
    }
    return -1;
}

static void walk_madt(struct acpi_info *ai)
{
    uint32_t len = rd32(ai->madt + 4);
    for (uint32_t off = 44; off + 2 <= len;) {
        uint8_t type = *(uint8_t *)(ai->madt + off), elen = *(uint8_t *)(ai->madt + off + 1);
        if (elen < 2 || off + elen > len)
            break;
        if (type == 0 && elen >= 8 && (*(uint32_t *)(ai->madt + off + 4) & 1))
            ai->lapics++;
        else if (type == 1 && elen >= 12 && !ai->ioapic)
            ai->ioapic = *(uint32_t *)(ai->madt + off + 4);
        off += elen;
    }
}

static int acpi_find(struct acpi_info *ai)
{
    memset(ai, 0, sizeof(*ai));
    ai->s5 = -1;
    uint32_t bda = 0x40e;               /* BDA word: EBDA segment */
    __asm__("" : "+r"(bda));            /* a low address, not a null pointer */
    uint32_t ebda = (uint32_t)*(volatile uint16_t *)bda << 4;
    if (ebda >= 0x80000 && ebda < 0xa0000)
        ai->rsdp = scan_rsdp(ebda, ebda + 1024);
    if (!ai->rsdp)
        ai->rsdp = scan_rsdp(0xe0000, 0x100000);
    if (!ai->rsdp)
        return 0;
    ai->rsdt = check_sdt(rd32(ai->rsdp + 16), "RSDT");
    if (!ai->rsdt)
        return 1;
    uint32_t n = (rd32(ai->rsdt + 4) - 36) / 4;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t t = rd32(ai->rsdt + 36 + 4 * i);
        if (!ai->fadt && check_sdt(t, "FACP"))
            ai->fadt = t;
        else if (!ai->madt && check_sdt(t, "APIC"))
            ai->madt = t;
    }
    if (ai->fadt && rd32(ai->fadt + 4) >= 92) {
        ai->sci = *(volatile uint16_t *)(ai->fadt + 46);
        ai->pm1a_evt = rd32(ai->fadt + 56);
        ai->pm1a_cnt = rd32(ai->fadt + 64);
        ai->pm1_evt_len = *(volatile uint8_t *)(ai->fadt + 88);
        ai->dsdt = check_sdt(rd32(ai->fadt + 40), "DSDT");
        if (ai->dsdt)
            ai->s5 = find_s5(ai->dsdt);
    }
    if (ai->madt)
        walk_madt(ai);
    return 1;
}

static void field(const char *name, uint32_t v)
{
    print(" ");
    print(name);
    print("=");
    print_hex_min(v);
}

void cmd_acpi(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    struct acpi_info ai;
    if (!acpi_find(&ai)) {
        error("no RSDP in the EBDA or 0xe0000-0xfffff");
        return;
    }
    print("rsdp=");
    print_hex_min(ai.rsdp);
    field("rsdt", ai.rsdt);
    field("fadt", ai.fadt);
    field("madt", ai.madt);
    field("dsdt", ai.dsdt);
    field("pm1a_evt", ai.pm1a_evt);
    field("pm1a_cnt", ai.pm1a_cnt);
    field("sci", ai.sci);
    print(" s5=");
    if (ai.s5 < 0)
        print("none");
    else
        print_dec((uint32_t)ai.s5);
    print(" lapics=");
    print_dec(ai.lapics);
    field("ioapic", ai.ioapic);
    print_nl();
}

/* Usable PM blocks and \_S5, or an error line and 0. */
static int acpi_power_ready(struct acpi_info *ai)
{
    if (!acpi_find(ai) || !ai->fadt) {
        error("no ACPI FADT found");
        return 0;
    }
    if (!ai->pm1a_cnt || !ai->pm1a_evt || ai->pm1a_evt > 0xffff || ai->pm1a_cnt > 0xffff) {
        error("FADT has no I/O PM1a blocks");
        return 0;
    }
    if (ai->s5 < 0) {
        error("no \\_S5 package in the DSDT");
        return 0;
    }
    return 1;
}

static void enter_s5(const struct acpi_info *ai)
{
    uint16_t cnt = inw((uint16_t)ai->pm1a_cnt);
    cnt = (uint16_t)((cnt & ~(7u << 10)) | ((uint32_t)(ai->s5 & 7) << 10) | SLP_EN);
    outw((uint16_t)ai->pm1a_cnt, cnt);
    for (uint32_t spin = 0; spin < 1000000; spin++)
        __asm__ volatile("pause");
    error("still running after the S5 write");
}

void cmd_poweroff(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    struct acpi_info ai;
    if (acpi_power_ready(&ai))
        enter_s5(&ai);
}

/* Enables the fixed power button event, then polls PM1_STS.PWRBTN_STS (the
 * probe has no IDT, so the SCI it raises stays unserviced); on a press it
 * clears the status and powers off through S5. */
void cmd_pwrbtn(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    struct acpi_info ai;
    if (!acpi_power_ready(&ai))
        return;
    uint16_t sts = (uint16_t)ai.pm1a_evt;
    uint16_t en = (uint16_t)(ai.pm1a_evt + ai.pm1_evt_len / 2);
    outw(sts, PWRBTN_STS);              /* write 1 to clear a stale press */
    outw(en, (uint16_t)(inw(en) | PWRBTN_EN));
    println("waiting for the power button");
    while (!(inw(sts) & PWRBTN_STS))
        __asm__ volatile("pause");
    outw(sts, PWRBTN_STS);
    println("power button pressed: powering off");
    enter_s5(&ai);
}
