"""`-drive throttling.*` and QMP `block_set_io_throttle`: configured limits against measured completions."""
