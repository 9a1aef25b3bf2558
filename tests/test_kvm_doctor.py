"""refvm.kvm.doctor: the report names what matters and the exit status follows the required caps."""

from __future__ import annotations

import os

from refvm.kvm import caps
from refvm.kvm.doctor import detect_pvm, doctor_exit_status, report, vendor_module
from tests.conftest import require


def test_report_on_this_host() -> None:
    require(os.access("/dev/kvm", os.R_OK | os.W_OK), "/dev/kvm is missing or not accessible")
    text = report()
    assert "API version: 12" in text
    for cap in caps.REQUIRED:
        assert caps.name(cap) in text
    assert "/dev/net/tun" in text and "/dev/vhost-net" in text
    assert doctor_exit_status() == 0
    if detect_pvm():
        assert vendor_module() == "kvm_pvm"
        assert "SOFTWARE KVM" in text and "QEMU TCG" in text


def test_report_without_kvm() -> None:
    text = report("/nonexistent/kvm")
    assert "UNUSABLE" in text and "No such file" in text and "NOT USABLE" in text
    assert doctor_exit_status("/nonexistent/kvm") == 1
