/* Virtio over PCI, modern interface only (VIRTIO 1.2 §4.1): the structures
 * are found through vendor capabilities and reached by 8/16/32-bit MMIO. */
#ifndef PROBE_VIRTIO_PCI_H
#define PROBE_VIRTIO_PCI_H

#include <stdint.h>
#include "pci.h"
#include "virtq.h"

#define VIRTIO_VENDOR 0x1af4

/* device status bits (§2.1) */
#define VIRTIO_ACKNOWLEDGE 1
#define VIRTIO_DRIVER      2
#define VIRTIO_DRIVER_OK   4
#define VIRTIO_FEATURES_OK 8
#define VIRTIO_NEEDS_RESET 0x40
#define VIRTIO_FAILED      0x80

/* feature bits above 31, as bit numbers in the high word */
#define VIRTIO_F_VERSION_1_HI (1u << (32 - 32))

/* device types (§5) */
#define VIRTIO_ID_BLK     2
#define VIRTIO_ID_CONSOLE 3
#define VIRTIO_ID_RNG     4
#define VIRTIO_ID_BALLOON 5

struct vp_dev {
    pci_bdf bdf;
    uint32_t type;               /* virtio device id */
    volatile uint8_t *common;    /* struct virtio_pci_common_cfg */
    volatile uint8_t *notify;    /* notify region base */
    uint32_t notify_mult;
    uint32_t notify_len;
    volatile uint8_t *isr;
    volatile uint8_t *device;    /* device-specific configuration */
    uint32_t device_len;
    uint32_t offered[2];         /* device features, words 0 and 1 */
    uint32_t accepted[2];        /* what we wrote back */
    uint32_t pci_gen;            /* pci_generation when mapped */
};

/* The mapping is still valid (no BAR/COMMAND change since vp_open). */
static inline int vp_current(const struct vp_dev *d) { return d->pci_gen == pci_generation; }

/* Virtio device type of a PCI function, or 0 if it is not a virtio device. */
uint32_t vp_type_of(pci_bdf bdf);
const char *vp_type_name(uint32_t type);
/* Finds the nth (0-based) device of `type` and maps its capabilities.
 * Prints an error and returns 0 on failure. */
int vp_open(struct vp_dev *d, uint32_t type, int nth, const char *name);
/* §3.1.1 steps 1-6: reset, ACKNOWLEDGE, DRIVER, features (offered & want,
 * VERSION_1 always required), FEATURES_OK and its check. */
int vp_negotiate(struct vp_dev *d, uint32_t want_lo, uint32_t want_hi);
/* §3.1.1 step 7 for one queue: size min(device max, VQ_SIZE), rings in `ring`. */
int vp_setup_queue(struct vp_dev *d, struct virtq *vq, struct virtq_ring *ring, uint16_t index);
/* Step 8: DRIVER_OK. */
void vp_driver_ok(struct vp_dev *d);
/* Writes 0 to device_status and waits (bounded) until it reads back 0. */
int vp_reset(struct vp_dev *d);
uint8_t vp_status(struct vp_dev *d);

/* Device-specific configuration accessors (little-endian, natural widths). */
uint8_t vp_cfg8(struct vp_dev *d, uint32_t off);
uint16_t vp_cfg16(struct vp_dev *d, uint32_t off);
uint32_t vp_cfg32(struct vp_dev *d, uint32_t off);
/* A 64-bit field as two 32-bit reads, retried while config_generation moves. */
void vp_cfg64(struct vp_dev *d, uint32_t off, uint32_t *lo, uint32_t *hi);
void vp_cfg_write32(struct vp_dev *d, uint32_t off, uint32_t v);
void vp_cfg_write8(struct vp_dev *d, uint32_t off, uint8_t v);

#endif
