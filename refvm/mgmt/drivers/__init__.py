"""Hypervisor drivers behind one interface (``base.Driver``), chosen by the URI scheme."""
