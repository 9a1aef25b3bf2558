"""refvm: a reference hypervisor for Linux KVM."""
