"""Live migration: QEMU's migration stream framing (stream.py, ram.py) and device state as data (state.py)."""
