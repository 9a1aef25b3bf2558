/* What the virtio device drivers share. */
#ifndef PROBE_VIRTIO_DRV_H
#define PROBE_VIRTIO_DRV_H

#include "virtio_pci.h"
#include "virtq.h"

/* CRC-32 (IEEE, as zlib.crc32) so the host can check whole buffers. */
uint32_t crc32(const uint8_t *p, uint32_t n);

#endif
