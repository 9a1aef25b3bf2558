"""Known behaviours of libvirt drivers that differ from what the libvirt_api suite expects.

One entry per behaviour (conformance.verdicts.Known). libvirt's API documentation fixes few error numbers, so
where a driver picks another number than the QEMU driver (the reference management applications are written
against), the difference is implementation-defined, not a deviation.
"""

from __future__ import annotations

from conformance.verdicts import Known

TEST_DRIVER = "libvirt-test"

START_PAUSED_REFUSED = Known(
    target=TEST_DRIVER, kind="implementation-defined", behaviour="libvirt-test-start-paused-unsupported",
    sentence="virDomainCreateWithFlags: with VIR_DOMAIN_START_PAUSED the domain is started with its CPUs paused, "
             "where the hypervisor supports the flag (an unsupported flag is an error)",
    reason="libvirt 9.0's test driver refuses VIR_DOMAIN_START_PAUSED (unsupported flags 0x1)",
)
CREATE_RUNNING_INTERNAL_ERROR = Known(
    target=TEST_DRIVER, kind="implementation-defined", behaviour="libvirt-test-create-running-internal-error",
    sentence="virDomainCreate: returns -1 in case of error (the API names no error number for a running domain)",
    reason="the test driver reports VIR_ERR_INTERNAL_ERROR where the QEMU driver reports VIR_ERR_OPERATION_INVALID",
)
SUSPEND_INACTIVE_INTERNAL_ERROR = Known(
    target=TEST_DRIVER, kind="implementation-defined", behaviour="libvirt-test-suspend-inactive-internal-error",
    sentence="virDomainSuspend: returns -1 in case of failure (the API names no error number for an inactive domain)",
    reason="the test driver reports VIR_ERR_INTERNAL_ERROR in VIR_FROM_TEST where the QEMU driver reports "
           "VIR_ERR_OPERATION_INVALID in VIR_FROM_DOMAIN",
)
AUTOSTART_TRANSIENT_ALLOWED = Known(
    target=TEST_DRIVER, kind="implementation-defined", behaviour="libvirt-test-autostart-transient",
    sentence="virDomainSetAutostart: configure the domain to be started when the host boots (transient domains "
             "are not addressed)",
    reason="the test driver accepts autostart for a transient domain; the QEMU driver refuses it",
)
