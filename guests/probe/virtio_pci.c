/* Virtio PCI modern transport and the `virtio list` command. */
#include "virtio_pci.h"
#include "commands.h"
#include "print.h"
#include "util.h"

/* virtio_pci_cap.cfg_type (§4.1.4) */
#define CAP_COMMON  1
#define CAP_NOTIFY  2
#define CAP_ISR     3
#define CAP_DEVICE  4
#define CAP_PCI_CFG 5

/* struct virtio_pci_common_cfg offsets (§4.1.4.3) */
#define CC_DFSELECT     0
#define CC_DF           4
#define CC_GFSELECT     8
#define CC_GF           12
#define CC_MSIX         16
#define CC_NUMQ         18
#define CC_STATUS       20
#define CC_GENERATION   21
#define CC_Q_SELECT     22
#define CC_Q_SIZE       24
#define CC_Q_MSIX       26
#define CC_Q_ENABLE     28
#define CC_Q_NOFF       30
#define CC_Q_DESC       32
#define CC_Q_DRIVER     40
#define CC_Q_DEVICE     48

/* A reset that has not finished after this many reads (each an exit) or
 * VQ_REQUEST_TICKS is reported. */
#define RESET_POLLS 100000u

static inline void w8(volatile uint8_t *b, uint32_t o, uint8_t v) { *(volatile uint8_t *)(b + o) = v; }
static inline void w16(volatile uint8_t *b, uint32_t o, uint16_t v) { *(volatile uint16_t *)(b + o) = v; }
static inline void w32(volatile uint8_t *b, uint32_t o, uint32_t v) { *(volatile uint32_t *)(b + o) = v; }
static inline uint8_t r8(volatile uint8_t *b, uint32_t o) { return *(volatile uint8_t *)(b + o); }
static inline uint16_t r16(volatile uint8_t *b, uint32_t o) { return *(volatile uint16_t *)(b + o); }
static inline uint32_t r32(volatile uint8_t *b, uint32_t o) { return *(volatile uint32_t *)(b + o); }

/* 64-bit registers as two 32-bit writes, low half first (§4.1.3.1). */
static void w64(volatile uint8_t *b, uint32_t o, uint32_t lo)
{
    w32(b, o, lo);
    w32(b, o + 4, 0);
}

uint32_t vp_type_of(pci_bdf bdf)
{
    uint32_t id = pci_read32(bdf, PCI_VENDOR);
    if ((id & 0xffff) != VIRTIO_VENDOR)
        return 0;
    uint32_t dev = id >> 16;
    if (dev >= 0x1040 && dev <= 0x107f)
        return dev - 0x1040;
    if (dev >= 0x1000 && dev <= 0x103f)        /* transitional: type in subsystem id */
        return pci_read(bdf, PCI_SUBSYS_ID, 2);
    return 0;
}

const char *vp_type_name(uint32_t type)
{
    switch (type) {
    case 1: return "net";
    case 2: return "blk";
    case 3: return "console";
    case 4: return "rng";
    case 5: return "balloon";
    case 8: return "scsi";
    case 9: return "9p";
    case 16: return "gpu";
    case 18: return "input";
    case 19: return "vsock";
    case 26: return "fs";
    default: return "unknown";
    }
}

void cmd_virtio(int argc, char **argv)
{
    (void)argc;
    if (!str_eq(argv[1], "list")) {
        error("usage: virtio list");
        return;
    }
    pci_bdf bdf = PCI_ITER_START;
    int n = 0;
    while (pci_next(&bdf)) {
        uint32_t type = vp_type_of(bdf);
        if (!type)
            continue;
        uint32_t dev = pci_read(bdf, PCI_VENDOR + 2, 2);
        n++;
        print_bdf(bdf);
        print(" ");
        print_hex_raw(VIRTIO_VENDOR, 4);
        print(":");
        print_hex_raw(dev, 4);
        print(" ");
        print(vp_type_name(type));
        print(" type ");
        print_dec(type);
        println(dev >= 0x1040 ? " modern" : " transitional");
    }
    if (!n)
        println("virtio: no devices");
}

/* Physical address of BAR `bar`, or 0 if it is unusable (not memory, not
 * assigned, or above 4 GiB where the probe cannot reach). */
static uint32_t bar_addr(pci_bdf bdf, uint32_t bar)
{
    if (bar > 5)
        return 0;
    uint32_t lo = pci_read32(bdf, PCI_BAR0 + 4 * bar);
    if (lo & 1)
        return 0;
    if (((lo >> 1) & 3) == 2 && bar < 5 && pci_read32(bdf, PCI_BAR0 + 4 * bar + 4) != 0)
        return 0;
    return lo & ~0xfu;
}

static void vp_error(struct vp_dev *d, const char *msg)
{
    print("error: ");
    print_bdf(d->bdf);
    print(" ");
    println(msg);
}

int vp_open(struct vp_dev *d, uint32_t type, int nth, const char *name)
{
    pci_bdf bdf = PCI_ITER_START;
    int seen = 0, found = 0;

    memset(d, 0, sizeof(*d));
    pci_ensure_assigned();
    while (pci_next(&bdf)) {
        if (vp_type_of(bdf) == type && seen++ == nth) {
            found = 1;
            break;
        }
    }
    if (!found) {
        print("error: no virtio-");
        print(name);
        print(" device");
        if (nth) {
            print(" #");
            print_dec((uint32_t)nth);
        }
        print_nl();
        return 0;
    }
    d->bdf = bdf;
    d->type = type;
    d->pci_gen = pci_generation;

    /* The first capability of each type is the one to use (§4.1.4). */
    int count;
    for (uint32_t pos = pci_cap_next(bdf, 0, &count); pos; pos = pci_cap_next(bdf, pos, &count)) {
        uint32_t hdr = pci_read32(bdf, pos);
        if ((hdr & 0xff) != 0x09)
            continue;
        uint32_t cfg_type = (hdr >> 24) & 0xff;
        if (cfg_type < CAP_COMMON || cfg_type > CAP_DEVICE)
            continue;            /* PCI_CFG access window and unknown types: unused */
        uint32_t bar = pci_read32(bdf, pos + 4) & 0xff;
        uint32_t off = pci_read32(bdf, pos + 8);
        uint32_t len = pci_read32(bdf, pos + 12);
        uint32_t base = bar_addr(bdf, bar);
        if (!base)
            continue;
        volatile uint8_t *p = (volatile uint8_t *)(base + off);
        if (cfg_type == CAP_COMMON && !d->common) {
            d->common = p;
        } else if (cfg_type == CAP_NOTIFY && !d->notify) {
            d->notify = p;
            d->notify_len = len;
            d->notify_mult = pci_read32(bdf, pos + 16);
        } else if (cfg_type == CAP_ISR && !d->isr) {
            d->isr = p;
        } else if (cfg_type == CAP_DEVICE && !d->device) {
            d->device = p;
            d->device_len = len;
        }
    }
    if (!d->common || !d->notify || !d->isr) {
        vp_error(d, "lacks a usable common/notify/isr capability (legacy-only device?)");
        return 0;
    }
    /* Memory decoding and bus mastering (the device reads our rings). */
    uint32_t cmd = pci_read(bdf, PCI_COMMAND, 2);
    if ((cmd & (PCI_CMD_MEM | PCI_CMD_MASTER)) != (PCI_CMD_MEM | PCI_CMD_MASTER))
        pci_write(bdf, PCI_COMMAND, cmd | PCI_CMD_MEM | PCI_CMD_MASTER, 2);
    return 1;
}

uint8_t vp_status(struct vp_dev *d)
{
    return r8(d->common, CC_STATUS);
}

int vp_reset(struct vp_dev *d)
{
    w8(d->common, CC_STATUS, 0);
    /* The reset is complete when device_status reads back 0 (§4.1.4.3.2). */
    struct poll_bound b;
    poll_start(&b, VQ_REQUEST_TICKS, RESET_POLLS);
    do {
        if (r8(d->common, CC_STATUS) == 0)
            return 1;
    } while (!poll_expired(&b));
    vp_error(d, "timeout waiting for reset (device_status != 0)");
    return 0;
}

int vp_negotiate(struct vp_dev *d, uint32_t want_lo, uint32_t want_hi)
{
    if (!vp_reset(d))
        return 0;
    w8(d->common, CC_STATUS, VIRTIO_ACKNOWLEDGE);
    w8(d->common, CC_STATUS, VIRTIO_ACKNOWLEDGE | VIRTIO_DRIVER);
    for (uint32_t i = 0; i < 2; i++) {
        w32(d->common, CC_DFSELECT, i);
        d->offered[i] = r32(d->common, CC_DF);
    }
    if (!(d->offered[1] & VIRTIO_F_VERSION_1_HI)) {
        w8(d->common, CC_STATUS, VIRTIO_FAILED);
        vp_error(d, "does not offer VIRTIO_F_VERSION_1");
        return 0;
    }
    d->accepted[0] = d->offered[0] & want_lo;
    d->accepted[1] = d->offered[1] & (want_hi | VIRTIO_F_VERSION_1_HI);
    for (uint32_t i = 0; i < 2; i++) {
        w32(d->common, CC_GFSELECT, i);
        w32(d->common, CC_GF, d->accepted[i]);
    }
    w8(d->common, CC_STATUS, VIRTIO_ACKNOWLEDGE | VIRTIO_DRIVER | VIRTIO_FEATURES_OK);
    if (!(vp_status(d) & VIRTIO_FEATURES_OK)) {
        w8(d->common, CC_STATUS, VIRTIO_FAILED);
        vp_error(d, "did not accept our features (FEATURES_OK clear)");
        return 0;
    }
    return 1;
}

int vp_setup_queue(struct vp_dev *d, struct virtq *vq, struct virtq_ring *ring, uint16_t index)
{
    w16(d->common, CC_Q_SELECT, index);
    uint16_t max = r16(d->common, CC_Q_SIZE);
    if (max == 0) {
        print("error: ");
        print_bdf(d->bdf);
        print(" queue ");
        print_dec(index);
        println(" not available");
        return 0;
    }
    uint16_t size = max < VQ_SIZE ? max : VQ_SIZE;
    w16(d->common, CC_Q_SIZE, size);
    virtq_init(vq, ring, index, size);
    w64(d->common, CC_Q_DESC, (uint32_t)ring->desc);
    w64(d->common, CC_Q_DRIVER, (uint32_t)&ring->avail);
    w64(d->common, CC_Q_DEVICE, (uint32_t)&ring->used);
    uint16_t noff = r16(d->common, CC_Q_NOFF);
    uint32_t where = (uint32_t)noff * d->notify_mult;
    if (where + 2 > d->notify_len) {   /* §4.1.4.4: must lie inside the capability */
        print("error: ");
        print_bdf(d->bdf);
        print(" queue ");
        print_dec(index);
        print(" notify offset ");
        print_hex_min(where);
        println(" outside the notify region");
        return 0;
    }
    vq->notify = (volatile uint16_t *)(d->notify + where);
    w16(d->common, CC_Q_ENABLE, 1);
    return 1;
}

void vp_driver_ok(struct vp_dev *d)
{
    w8(d->common, CC_STATUS,
       VIRTIO_ACKNOWLEDGE | VIRTIO_DRIVER | VIRTIO_FEATURES_OK | VIRTIO_DRIVER_OK);
}

/* Accesses outside the device-specific window the capability announced
 * would hit whatever else is mapped there: they read as all ones and writes
 * are dropped. */
static int cfg_ok(struct vp_dev *d, uint32_t off, uint32_t width)
{
    return d->device && off + width <= d->device_len;
}

uint8_t vp_cfg8(struct vp_dev *d, uint32_t off) { return cfg_ok(d, off, 1) ? r8(d->device, off) : 0xff; }
uint16_t vp_cfg16(struct vp_dev *d, uint32_t off) { return cfg_ok(d, off, 2) ? r16(d->device, off) : 0xffff; }
uint32_t vp_cfg32(struct vp_dev *d, uint32_t off) { return cfg_ok(d, off, 4) ? r32(d->device, off) : 0xffffffffu; }

void vp_cfg_write32(struct vp_dev *d, uint32_t off, uint32_t v)
{
    if (cfg_ok(d, off, 4))
        w32(d->device, off, v);
}

void vp_cfg_write8(struct vp_dev *d, uint32_t off, uint8_t v)
{
    if (cfg_ok(d, off, 1))
        w8(d->device, off, v);
}

void vp_cfg64(struct vp_dev *d, uint32_t off, uint32_t *lo, uint32_t *hi)
{
    /* §4.1.3.1 / §2.5.1: a multi-field read is consistent if the generation
     * did not change across it; a few retries, then take what we have. */
    for (int tries = 0; tries < 4; tries++) {
        uint8_t g = r8(d->common, CC_GENERATION);
        *lo = vp_cfg32(d, off);
        *hi = vp_cfg32(d, off + 4);
        if (r8(d->common, CC_GENERATION) == g)
            return;
    }
}
