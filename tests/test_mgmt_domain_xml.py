"""Domain XML: the subset refvmd supports parses, gets libvirt's defaults, round-trips, and refuses the rest with
libvirt's codes (compared with libvirt's own parser through test:///default where both apply)."""
from __future__ import annotations

import re

import pytest

from refvm.mgmt import errors
from refvm.mgmt.domain_format import format_domain
from refvm.mgmt.domain_xml import parse_domain
from tests.test_mgmt_errors import _libvirt

FULL = """<domain type='kvm'>
  <name>full</name><uuid>0f8e8a3c-1111-4a2b-9c3d-123456789abc</uuid>
  <title>t</title><description>d &amp; e</description>
  <maxMemory slots='4' unit='GiB'>2</maxMemory>
  <memory unit='MiB'>128</memory><currentMemory unit='KiB'>65536</currentMemory>
  <vcpu placement='static' current='1'>2</vcpu>
  <cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model>
    <topology sockets='1' dies='1' cores='2' threads='1'/><feature policy='disable' name='svm'/></cpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>/k</kernel><initrd>/i</initrd>
    <cmdline>console=ttyS0</cmdline></os>
  <features><acpi/><apic/></features><clock offset='localtime'/>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none' io='threads' discard='unmap'/>
      <source file='/a.qcow2'/><target dev='vda' bus='virtio'/>
      <iotune><read_bytes_sec>1000</read_bytes_sec><write_iops_sec>5</write_iops_sec></iotune>
      <readonly/><serial>SER1</serial>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x07' function='0x0'/></disk>
    <disk type='block'><source dev='/dev/loop0'/><target dev='vdb'/></disk>
    <disk type='volume'><source pool='p' volume='v'/><target dev='vdc' bus='virtio'/></disk>
    <interface type='bridge'><mac address='52:54:00:AA:bb:01'/><source bridge='br0'/><target dev='tap5'/>
      <model type='virtio'/></interface>
    <interface type='ethernet'/>
    <serial type='file'><source path='/tmp/ser.log'/><target port='0'/></serial>
    <memballoon model='virtio'/><rng model='virtio'><backend model='random'>/dev/random</backend></rng>
    <controller type='pci' index='0' model='pci-root'/>
  </devices></domain>"""


def test_full_subset_round_trips() -> None:
    dom = parse_domain(FULL)
    text = format_domain(dom)
    assert format_domain(parse_domain(text)) == text
    assert dom.memory == 131072 and dom.current_memory == 65536 and dom.max_memory == 2 * 1024 * 1024
    assert dom.vcpus == 2 and dom.vcpu_current == 1
    assert dom.disks[0].iotune.values == {"read_bytes_sec": 1000, "write_iops_sec": 5}
    assert dom.interfaces[0].mac == "52:54:00:aa:bb:01"
    assert dom.consoles[0].type == "file", "libvirt adds a console for the first serial"


def test_defaults_filled_as_libvirt_fills_them() -> None:
    dom = parse_domain(FULL)
    assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", dom.interfaces[1].mac)
    slots = [d.address.slot for d in [*dom.interfaces, *dom.disks, dom.memballoon, *dom.rngs]]
    assert len(set(slots)) == len(slots) and 7 in slots and 0 not in slots and 1 not in slots
    bare = parse_domain("<domain type='kvm'><name>b</name><memory>1024</memory><os><type>hvm</type></os></domain>")
    assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", bare.uuid)
    assert bare.current_memory == 1024 and bare.memballoon.model == "virtio" and bare.controllers
    assert bare.os.boot == ["hd"]


BASE = "<domain type='kvm'><name>{name}</name><memory>1024</memory><os><type>hvm</type></os>{extra}</domain>"


@pytest.mark.parametrize(("name", "extra", "code"), [
    ("a/b", "", errors.VIR_ERR_XML_ERROR),
    ("n", "<devices><disk type='foo'><source file='/x'/><target dev='vda'/></disk></devices>",
     errors.VIR_ERR_XML_ERROR),
    ("n", "<devices><disk type='file'><source file='/x'/></disk></devices>", errors.VIR_ERR_NO_TARGET),
    ("n", "<devices><interface type='ethernet'><mac address='01:00:00:00:00:01'/></interface></devices>",
     errors.VIR_ERR_XML_ERROR),
    ("n", "<devices><interface type='ethernet'><mac address='zz'/></interface></devices>", errors.VIR_ERR_XML_ERROR),
    ("n", "<on_poweroff>zap</on_poweroff>", errors.VIR_ERR_CONFIG_UNSUPPORTED),
    ("n", "<clock offset='mars'/>", errors.VIR_ERR_CONFIG_UNSUPPORTED),
], ids=["slash-name", "disk-type", "no-target", "multicast-mac", "bad-mac", "on_poweroff", "clock"])
def test_errors_match_libvirts_parser(name: str, extra: str, code: int) -> None:
    xml = BASE.format(name=name, extra=extra)
    with pytest.raises(errors.VirError) as ours:
        parse_domain(xml)
    lv = _libvirt()
    with pytest.raises(lv.libvirtError) as theirs:
        lv.open("test:///default").defineXML(xml.replace("type='kvm'", "type='test'", 1))
    assert ours.value.code == theirs.value.get_error_code() == code
    assert ours.value.message == theirs.value.get_error_message()


def test_malformed_xml_is_an_xml_detail_error_like_libvirts() -> None:
    lv = _libvirt()
    for text in ("garbage", "<domain><name>x</name>"):
        with pytest.raises(errors.VirError) as ours:
            parse_domain(text)
        with pytest.raises(lv.libvirtError) as theirs:
            lv.open("test:///default").defineXML(text)
        assert ours.value.code == theirs.value.get_error_code() == errors.VIR_ERR_XML_DETAIL
        assert ours.value.message.startswith("(domain_definition):1: ")


@pytest.mark.parametrize(("xml", "code", "needle"), [
    (BASE.format(name="..", extra=""), errors.VIR_ERR_XML_ERROR, "'..'"),
    ("<foo/>", errors.VIR_ERR_XML_ERROR, "expecting root element of 'domain', not 'foo'"),
    (BASE.format(name="n", extra="<devices><graphics type='vnc'/></devices>"), errors.VIR_ERR_CONFIG_UNSUPPORTED,
     "<graphics>"),
    (BASE.format(name="n", extra="<devices><disk type='network'><target dev='vda'/></disk></devices>"),
     errors.VIR_ERR_CONFIG_UNSUPPORTED, "'network'"),
    (BASE.format(name="n", extra="<devices><interface type='network'/></devices>"),
     errors.VIR_ERR_CONFIG_UNSUPPORTED, "'network'"),
    (BASE.format(name="n", extra="<devices><disk><target dev='vda'/><iotune><total_bytes_sec>1</total_bytes_sec>"
                 "<read_bytes_sec>1</read_bytes_sec></iotune></disk></devices>"),
     errors.VIR_ERR_XML_ERROR, "total and read/write bytes_sec cannot be set at the same time"),
    (BASE.format(name="n", extra="<memtune/>"), errors.VIR_ERR_CONFIG_UNSUPPORTED, "<memtune>"),
    ("<domain type='xen'><name>n</name><memory>1</memory><os><type>hvm</type></os></domain>",
     errors.VIR_ERR_CONFIG_UNSUPPORTED, "invalid domain type xen"),
], ids=["dotdot", "root", "graphics", "disk-network", "iface-network", "iotune", "memtune", "xen"])
def test_refusals_name_the_element(xml: str, code: int, needle: str) -> None:
    with pytest.raises(errors.VirError) as info:
        parse_domain(xml)
    assert info.value.code == code and needle in info.value.message


def test_unknown_elements_ignored_unless_validating() -> None:
    xml = BASE.format(name="n", extra="<bogus/>")
    assert parse_domain(xml).name == "n"
    with pytest.raises(errors.VirError) as info:
        parse_domain(xml, validate=True)
    assert info.value.code == errors.VIR_ERR_XML_INVALID_SCHEMA and "bogus" in info.value.message


def test_memory_units_scale_as_libvirts() -> None:
    for unit, kib in (("b", 1), ("KB", 1), ("k", 1), ("MB", 977), ("M", 1024), ("GiB", 1048576)):
        xml = f"<domain type='kvm'><name>n</name><memory unit='{unit}'>1</memory><os><type>hvm</type></os></domain>"
        assert parse_domain(xml).memory == kib, unit
    with pytest.raises(errors.VirError) as info:
        parse_domain("<domain type='kvm'><name>n</name><memory unit='XB'>1</memory><os><type>hvm</type></os></domain>")
    assert info.value.code == errors.VIR_ERR_INVALID_ARG
    assert info.value.message == "invalid argument: unknown suffix 'XB'"
