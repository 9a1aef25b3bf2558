"""Domain state, resources and statistics: info, state, memory, block and interface stats, block I/O tuning."""
from __future__ import annotations

from refvm.mgmt import errors, vir
from refvm.mgmt.dispatch import check_flags, driver_of, procedure
from refvm.mgmt.rpc import protocol as P
from refvm.mgmt.rpc.protocol import Proc
from refvm.mgmt.rpc.types import pack_typed_param, unpack_domain, unpack_typed_params
from refvm.mgmt.rpc.xdr import Packer, Unpacker


@procedure(Proc.DOMAIN_GET_INFO)
def get_info(session, args: Unpacker, ret: Packer) -> None:
    info = driver_of(session).info(unpack_domain(args))
    ret.uint(info.state)  # unsigned char: one XDR unit
    ret.uhyper(info.max_mem)
    ret.uhyper(info.memory)
    ret.uint(info.nr_virt_cpu)  # unsigned short: one XDR unit
    ret.uhyper(info.cpu_time)


@procedure(Proc.DOMAIN_GET_STATE)
def get_state(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    check_flags(args.uint(), 0, "virDomainGetState")
    state, reason = driver_of(session).state(dom)
    ret.int(state)
    ret.int(reason)


@procedure(Proc.DOMAIN_GET_MAX_MEMORY)
def get_max_memory(session, args: Unpacker, ret: Packer) -> None:
    ret.uhyper(driver_of(session).info(unpack_domain(args)).max_mem)


@procedure(Proc.DOMAIN_GET_MAX_VCPUS)
def get_max_vcpus(session, args: Unpacker, ret: Packer) -> None:
    ret.int(driver_of(session).info(unpack_domain(args)).nr_virt_cpu)


@procedure(Proc.DOMAIN_GET_VCPUS_FLAGS)
def get_vcpus_flags(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    args.uint()
    ret.int(driver_of(session).info(dom).nr_virt_cpu)


@procedure(Proc.DOMAIN_SET_MAX_MEMORY)
def set_max_memory(session, args: Unpacker, ret: Packer) -> None:
    """virDomainSetMaxMemory is setMemoryFlags(MEM_MAXIMUM) on the current state, as libvirtd's QEMU driver."""
    dom = unpack_domain(args)
    driver_of(session).set_memory(dom, args.uhyper(), vir.VIR_DOMAIN_MEM_MAXIMUM)


@procedure(Proc.DOMAIN_SET_MEMORY)
def set_memory(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    driver_of(session).set_memory(dom, args.uhyper(), vir.VIR_DOMAIN_AFFECT_LIVE)  # the legacy call is live


@procedure(Proc.DOMAIN_SET_MEMORY_FLAGS)
def set_memory_flags(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    kib = args.uhyper()
    driver_of(session).set_memory(dom, kib, args.uint())


@procedure(Proc.DOMAIN_MEMORY_STATS)
def memory_stats(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    max_stats = args.uint()
    flags = args.uint()
    if max_stats > P.MEMORY_STATS_MAX:
        raise errors.VirError(errors.VIR_ERR_RPC, "maxStats > REMOTE_DOMAIN_MEMORY_STATS_MAX",
                              domain=errors.VIR_FROM_RPC)
    stats = driver_of(session).memory_stats(dom, max_stats, flags)[:max_stats]

    def pack(stat: tuple[int, int]) -> None:
        ret.int(stat[0])
        ret.uhyper(stat[1])

    ret.array(stats, pack)


@procedure(Proc.DOMAIN_BLOCK_STATS)
def block_stats(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    s = driver_of(session).block_stats(dom, args.string())
    for v in (s.rd_req, s.rd_bytes, s.wr_req, s.wr_bytes, s.errs):
        ret.hyper(v)


@procedure(Proc.DOMAIN_INTERFACE_STATS)
def interface_stats(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    s = driver_of(session).interface_stats(dom, args.string())
    for v in (s.rx_bytes, s.rx_packets, s.rx_errs, s.rx_drop, s.tx_bytes, s.tx_packets, s.tx_errs, s.tx_drop):
        ret.hyper(v)


@procedure(Proc.DOMAIN_SET_BLOCK_IO_TUNE)
def set_block_io_tune(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    disk = args.string()
    params = unpack_typed_params(args, P.BLOCK_IO_TUNE_PARAMETERS_MAX)
    driver_of(session).set_block_io_tune(dom, disk, params, args.uint())


@procedure(Proc.DOMAIN_GET_BLOCK_IO_TUNE)
def get_block_io_tune(session, args: Unpacker, ret: Packer) -> None:
    """nparams 0 asks how many parameters there are (libvirt's two-call convention): empty list + count."""
    dom = unpack_domain(args)
    disk = args.opt_string()
    nparams = args.int()
    flags = args.uint()
    if nparams > P.BLOCK_IO_TUNE_PARAMETERS_MAX:
        raise errors.VirError(errors.VIR_ERR_RPC, "nparams too large", domain=errors.VIR_FROM_RPC)
    params = driver_of(session).get_block_io_tune(dom, disk, flags)
    if nparams == 0:
        ret.uint(0)
        ret.int(len(params))
        return
    chosen = params[:nparams]
    ret.array(chosen, lambda prm: pack_typed_param(ret, *prm))
    ret.int(len(chosen))
