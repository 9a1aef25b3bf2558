"""libvirt's error numbers, domains and messages, so that refvmd's errors read as libvirt's do.

The numeric values are libvirt's ABI (include/libvirt/virterror.h; a test checks them against libvirt-python's
constants). Messages are formatted as libvirt's virErrorMsg formats them: a fixed prefix per code, then
``: detail`` when a detail is given (e.g. "Requested operation is not valid: domain is already running").
"""
from __future__ import annotations

from refvm.mgmt import deviations

# virErrorLevel
VIR_ERR_NONE = 0
VIR_ERR_WARNING = 1
VIR_ERR_ERROR = 2

# virErrorDomain (where the error comes from)
VIR_FROM_NONE = 0
VIR_FROM_XML = 5
VIR_FROM_DOM = 6
VIR_FROM_RPC = 7
VIR_FROM_CONF = 9
VIR_FROM_QEMU = 10
VIR_FROM_TEST = 12
VIR_FROM_REMOTE = 13
VIR_FROM_STORAGE = 18
VIR_FROM_DOMAIN = 20
VIR_FROM_SECURITY = 24
VIR_FROM_STREAMS = 38
VIR_FROM_CAPABILITIES = 44

# virErrorNumber
VIR_ERR_OK = 0
VIR_ERR_INTERNAL_ERROR = 1
VIR_ERR_NO_MEMORY = 2
VIR_ERR_NO_SUPPORT = 3
VIR_ERR_NO_CONNECT = 5
VIR_ERR_INVALID_CONN = 6
VIR_ERR_INVALID_DOMAIN = 7
VIR_ERR_INVALID_ARG = 8
VIR_ERR_OPERATION_FAILED = 9
VIR_ERR_XML_ERROR = 27
VIR_ERR_DOM_EXIST = 28
VIR_ERR_OPERATION_DENIED = 29
VIR_ERR_XML_DETAIL = 35
VIR_ERR_NO_SOURCE = 19
VIR_ERR_NO_TARGET = 20
VIR_ERR_NO_NAME = 21
VIR_ERR_SYSTEM_ERROR = 38
VIR_ERR_RPC = 39
VIR_ERR_NO_DOMAIN = 42
VIR_ERR_INVALID_STORAGE_POOL = 46
VIR_ERR_NO_STORAGE_POOL = 49
VIR_ERR_NO_STORAGE_VOL = 50
VIR_ERR_STORAGE_PROBE_FAILED = 75
VIR_ERR_STORAGE_POOL_BUILT = 76
VIR_ERR_STORAGE_VOL_EXIST = 90
VIR_ERR_INVALID_MAC = 44
VIR_ERR_OPERATION_INVALID = 55
VIR_ERR_CONFIG_UNSUPPORTED = 67
VIR_ERR_OPERATION_TIMEOUT = 68
VIR_ERR_OVERFLOW = 82
VIR_ERR_ARGUMENT_UNSUPPORTED = 74
VIR_ERR_OPERATION_ABORTED = 78
VIR_ERR_OPERATION_UNSUPPORTED = 84
VIR_ERR_XML_INVALID_SCHEMA = 92
VIR_ERR_DEVICE_MISSING = 99

# code -> (message without detail, message with detail as a %s format): libvirt's wording.
_MESSAGES: dict[int, tuple[str, str]] = {
    VIR_ERR_OK: ("", "%s"),
    VIR_ERR_INTERNAL_ERROR: ("internal error", "internal error: %s"),
    VIR_ERR_NO_MEMORY: ("out of memory", "out of memory: %s"),
    VIR_ERR_NO_SUPPORT: ("this function is not supported by the connection driver",
                         "this function is not supported by the connection driver: %s"),
    VIR_ERR_NO_CONNECT: ("no connection driver available", "no connection driver available for %s"),
    VIR_ERR_INVALID_CONN: ("invalid connection pointer in", "invalid connection pointer in %s"),
    VIR_ERR_INVALID_DOMAIN: ("invalid domain pointer in", "invalid domain pointer in %s"),
    VIR_ERR_INVALID_ARG: ("invalid argument", "invalid argument: %s"),
    VIR_ERR_OPERATION_FAILED: ("operation failed", "operation failed: %s"),
    VIR_ERR_NO_SOURCE: ("missing source information for device", "missing source information for device %s"),
    VIR_ERR_NO_TARGET: ("missing target information for device", "missing target information for device %s"),
    VIR_ERR_NO_NAME: ("missing name information", "missing name information in %s"),
    VIR_ERR_XML_ERROR: ("XML description is invalid or not well formed", "XML error: %s"),
    VIR_ERR_DOM_EXIST: ("this domain exists already", "domain %s exists already"),
    VIR_ERR_OPERATION_DENIED: ("operation forbidden for read only access", "operation forbidden: %s"),
    VIR_ERR_XML_DETAIL: ("parser error", "%s"),
    VIR_ERR_SYSTEM_ERROR: ("system call error", "%s"),
    VIR_ERR_RPC: ("RPC error", "%s"),
    VIR_ERR_NO_DOMAIN: ("Domain not found", "Domain not found: %s"),
    VIR_ERR_NO_STORAGE_POOL: ("Storage pool not found", "Storage pool not found: %s"),
    VIR_ERR_NO_STORAGE_VOL: ("Storage volume not found", "Storage volume not found: %s"),
    VIR_ERR_STORAGE_PROBE_FAILED: ("Storage pool probe failed", "Storage pool probe failed: %s"),
    VIR_ERR_STORAGE_POOL_BUILT: ("Storage pool already built", "Storage pool already built: %s"),
    VIR_ERR_STORAGE_VOL_EXIST: ("this storage volume exists already", "storage volume %s exists already"),
    VIR_ERR_INVALID_MAC: ("invalid MAC address", "invalid MAC address: %s"),
    VIR_ERR_OPERATION_INVALID: ("Requested operation is not valid", "Requested operation is not valid: %s"),
    VIR_ERR_CONFIG_UNSUPPORTED: ("unsupported configuration", "unsupported configuration: %s"),
    VIR_ERR_OPERATION_TIMEOUT: ("Timed out during operation", "Timed out during operation: %s"),
    VIR_ERR_OVERFLOW: ("value too large", "value too large: %s"),
    VIR_ERR_ARGUMENT_UNSUPPORTED: ("argument unsupported", "argument unsupported: %s"),
    VIR_ERR_OPERATION_ABORTED: ("operation aborted", "operation aborted: %s"),
    VIR_ERR_OPERATION_UNSUPPORTED: ("Operation not supported", "Operation not supported: %s"),
    VIR_ERR_XML_INVALID_SCHEMA: ("XML document failed to validate against schema",
                                 "XML document failed to validate against schema: %s"),
    VIR_ERR_DEVICE_MISSING: ("device not found", "device not found: %s"),
}


def format_message(code: int, detail: str | None) -> str:
    """The text libvirt would put in virError.message for ``code`` with this detail (or none)."""
    bare, with_detail = _MESSAGES.get(code, ("unknown error", "%s"))
    if not detail:
        return bare
    return with_detail % detail


class VirError(Exception):
    """An error as libvirt reports it: the RPC layer sends these fields unchanged in its error reply.

    ``message`` is the full formatted text (prefix + detail); ``detail`` keeps what the driver said, for
    remote_error's str1 and for tests.
    """

    def __init__(self, code: int, detail: str | None = None, *, domain: int = VIR_FROM_NONE,
                 level: int = VIR_ERR_ERROR) -> None:
        self.code = code
        self.domain = domain
        self.level = level
        self.detail = detail
        self.message = format_message(code, detail)
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"VirError(code={self.code}, domain={self.domain}, message={self.message!r})"


# Short constructors for the errors that refvmd raises most, each with the domain libvirt's QEMU driver uses.

def operation_invalid(detail: str, domain: int = VIR_FROM_QEMU) -> VirError:
    """VIR_ERR_OPERATION_INVALID, e.g. "domain is not running"."""
    return VirError(VIR_ERR_OPERATION_INVALID, detail, domain=domain)


def not_running() -> VirError:
    """libvirt's shared active-domain check (virDomainObjCheckActive) reports in VIR_FROM_DOMAIN."""
    domain = VIR_FROM_QEMU if deviations.active("error-domain-driver") else VIR_FROM_DOMAIN
    return operation_invalid("domain is not running", domain=domain)


def no_domain(detail: str, domain: int = VIR_FROM_QEMU) -> VirError:
    """VIR_ERR_NO_DOMAIN, e.g. "no domain with matching name 'x'"."""
    return VirError(VIR_ERR_NO_DOMAIN, detail, domain=domain)


def xml_error(detail: str) -> VirError:
    """VIR_ERR_XML_ERROR from the domain config parser (libvirt: VIR_FROM_DOMAIN)."""
    return VirError(VIR_ERR_XML_ERROR, detail, domain=VIR_FROM_DOMAIN)


def config_unsupported(detail: str, domain: int = VIR_FROM_DOMAIN) -> VirError:
    """VIR_ERR_CONFIG_UNSUPPORTED, e.g. "unknown disk type 'network'"-like refusals."""
    return VirError(VIR_ERR_CONFIG_UNSUPPORTED, detail, domain=domain)


def invalid_arg(detail: str, domain: int = VIR_FROM_QEMU) -> VirError:
    """VIR_ERR_INVALID_ARG for a bad flag, parameter or value."""
    return VirError(VIR_ERR_INVALID_ARG, detail, domain=domain)


def internal_error(detail: str, domain: int = VIR_FROM_QEMU) -> VirError:
    """VIR_ERR_INTERNAL_ERROR: the hypervisor misbehaved (its monitor closed, a reply made no sense)."""
    return VirError(VIR_ERR_INTERNAL_ERROR, detail, domain=domain)


def operation_failed(detail: str, domain: int = VIR_FROM_QEMU) -> VirError:
    """VIR_ERR_OPERATION_FAILED: a command to the hypervisor failed."""
    return VirError(VIR_ERR_OPERATION_FAILED, detail, domain=domain)
