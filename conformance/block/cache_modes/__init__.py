"""`-drive cache=MODE`: guest-visible write cache, image open flags and host syscall ordering."""
