"""refvmd, the management layer: a libvirt-compatible daemon that drives refvm and QEMU processes.

Layers (an import only ever points down): ``errors`` and ``domain_xml`` are data; ``argv`` turns a domain into
a command line; ``state`` keeps definitions on disk; ``drivers/`` run hypervisor processes through QMP;
``rpc/`` and the daemon speak libvirt's remote protocol on top of ``drivers.base.Driver``. Nothing here imports
refvm.machine or a device model: hypervisors are processes, exactly as libvirt treats QEMU.
"""
