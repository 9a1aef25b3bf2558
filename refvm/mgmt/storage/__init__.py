"""Storage pools and volumes of refvmd, in libvirt's layers.

``backend``  the pool backend interface: libvirt's virStorageBackend operations, one method each
``files``    the storage *file* backend: probing formats, sizes and backing chains with refvm.block
``dir_fs``   the ``dir`` and ``fs`` pool types (``logical`` needs device-mapper, absent on this machine)
``wipe``     wipe algorithms and their passes
``xml``      libvirt's pool and volume XML (units, permissions, format, backingStore)
``driver``   the pools of one URI: registry, persistence, autostart, lookups, per-volume locks
"""
