/* PCI configuration mechanism #1 (ports 0xCF8/0xCFC), bus 0 only: enumerate
 * functions, size and assign BARs, walk capability lists. Every config access
 * costs two port-I/O exits under a hypervisor, so callers read only what they
 * print or need. */
#ifndef PROBE_PCI_H
#define PROBE_PCI_H

#include <stdint.h>

/* bus << 8 | dev << 3 | fn, as in the CF8 address */
typedef uint16_t pci_bdf;
#define PCI_BDF(b, d, f) ((pci_bdf)(((b) << 8) | ((d) << 3) | (f)))
#define PCI_BUS(x) ((x) >> 8)
#define PCI_DEV(x) (((x) >> 3) & 0x1f)
#define PCI_FN(x)  ((x) & 7)

#define PCI_VENDOR     0x00
#define PCI_COMMAND    0x04
#define PCI_STATUS     0x06
#define PCI_REVISION   0x08
#define PCI_HEADER     0x0e
#define PCI_BAR0       0x10
#define PCI_SUBSYS_VID 0x2c
#define PCI_SUBSYS_ID  0x2e
#define PCI_CAP_PTR    0x34
#define PCI_INT_PIN    0x3d

#define PCI_CMD_IO     0x1
#define PCI_CMD_MEM    0x2
#define PCI_CMD_MASTER 0x4

#define PCI_CAP_MAX    48   /* bound on a capability walk: a looped list ends here */

uint32_t pci_read32(pci_bdf bdf, uint32_t off);
uint32_t pci_read(pci_bdf bdf, uint32_t off, uint32_t width);
void pci_write(pci_bdf bdf, uint32_t off, uint32_t value, uint32_t width);

/* Iterates over the present functions of bus 0 in B:D.F order, honouring
 * the multi-function bit. Start with *bdf = PCI_ITER_START; returns 0 when
 * done. */
#define PCI_ITER_START 0xffff
int pci_next(pci_bdf *bdf);

enum bar_kind { BAR_NONE = 0, BAR_IO, BAR_MEM32, BAR_MEM64 };
struct pci_bar {
    enum bar_kind kind;
    int prefetch;
    uint32_t size;      /* 0: unimplemented; BAR_MEM64 sizes >= 4 GiB are not assigned */
    int size_above_4g;
    uint32_t addr;      /* low 32 bits of the current address */
    uint32_t addr_hi;
};
/* Sizes all BARs by the all-ones method with decoding off, restoring each.
 * bars[i] of a 64-bit BAR's upper half stays BAR_NONE. Returns the slot count. */
int pci_probe_bars(pci_bdf bdf, struct pci_bar bars[6]);
/* Number of BAR slots in this header type (6 for type 0, 2 for bridges). */
int pci_bar_count(pci_bdf bdf);

/* Capability walk: start with pos = 0; returns the next capability's offset
 * or 0 at the end (or after PCI_CAP_MAX entries / on a bad pointer). */
uint32_t pci_cap_next(pci_bdf bdf, uint32_t pos, int *count);

/* Assigns every BAR on bus 0 (I/O from 0xc000 up, memory from 0xe0000000 up,
 * each aligned to its size), then enables I/O, memory and bus mastering.
 * Verbose: prints one line per BAR. Returns 0 on success. */
int pci_assign(int verbose);
/* Assigns once per boot, silently (virtio drivers call this). */
void pci_ensure_assigned(void);

void print_bdf(pci_bdf bdf);
/* "io", "mem32" or "mem64", plus " pref" if prefetchable */
void pci_print_bar_kind(const struct pci_bar *b);

/* Bumped whenever BARs or COMMAND may have changed (pciassign, pcicfg
 * writes below 0x28): virtio drivers then map and initialise again instead
 * of using stale addresses. */
extern uint32_t pci_generation;

#endif
