"""Block-layer conformance suites: qcow2 interop, cache modes, I/O throttling."""
