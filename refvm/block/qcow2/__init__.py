"""qcow2 image format (QEMU docs/interop/qcow2.txt), versions 2 and 3.

Modules, one job each: ``header`` (parse/serialize/check the header and extensions), ``hostfile`` (the file
underneath), ``refcount`` (refcount table/blocks, allocation), ``l2`` (L1/L2 entries, compressed clusters,
the L2 cache), ``image`` (the driver), ``create`` (new images), ``check`` (consistency check like qemu-img).
"""

from refvm.block.qcow2.check import CheckResult, check_image
from refvm.block.qcow2.create import create_qcow2
from refvm.block.qcow2.image import Qcow2Image

__all__ = ["Qcow2Image", "create_qcow2", "check_image", "CheckResult"]
