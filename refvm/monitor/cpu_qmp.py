"""QMP commands about CPUs: query-cpu-definitions, query-cpu-model-expansion, query-cpus-fast,
query-hotpluggable-cpus (names, argument checks, error texts and reply shapes of QEMU 7.2's
qapi/machine-target.json and qapi/machine.json)."""

from __future__ import annotations

import os
from typing import Any

from refvm.cpu.cpuid import Entry, host_identity, plan_cpu
from refvm.cpu.features import FEATURE_BITS, all_names, canonical
from refvm.cpu.models import MODEL_BY_NAME, MODELS, SPECIAL_MODELS
from refvm.cpu.spec import CpuSpec, CpuSpecError, parse_cpu
from refvm.cpu.topology import Topology
from refvm.devices.tree import pc_unattached_paths
from refvm.monitor.qmp import QmpError, QmpServer

EXPANSION_TYPES = ("static", "full")


class CpuCommands:
    """Registers the CPU commands of one machine on a QMP server."""

    def __init__(self, server: QmpServer, machine: Any) -> None:
        self.machine = machine
        self._supported: list[Entry] | None = None
        server.register("query-cpu-definitions", self.query_cpu_definitions)
        server.register("query-cpu-model-expansion", self.query_cpu_model_expansion,
                        args={"type": str, "model": dict})
        server.register("query-cpus-fast", self.query_cpus_fast)
        server.register("query-hotpluggable-cpus", self.query_hotpluggable_cpus)

    # -- helpers ---------------------------------------------------------------------------------------

    def supported(self) -> list[Entry]:
        """The host KVM's supported CPUID (empty under -accel qtest without /dev/kvm: nothing is filtered)."""
        if self._supported is None:
            try:
                from refvm.kvm import Kvm

                kvm = Kvm()
                try:
                    entries = kvm.supported_cpuid()
                finally:
                    kvm.close()
                self._supported = [(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx) for e in entries]
            except (OSError, ValueError, RuntimeError):
                self._supported = []
        return self._supported

    def topology(self) -> Topology:
        cfg = self.machine.config
        return cfg.topology or Topology(cfg.smp, 1, 1, cfg.smp, 1, cfg.smp)

    def cpu_type(self) -> str:
        return f"{self.machine.config.cpu.split(',', 1)[0]}-x86_64-cpu"

    def cpu_paths(self) -> list[str]:
        """The QOM path of each present CPU, by cpu-index: the device tree's CPU nodes, numbered as QEMU's
        ``pc`` numbers them (CPU 0 is ``device[0]``, the kvmvapic ``device[1]``, CPU K>0 ``device[K+1]``)."""
        tree = getattr(self.machine, "devices", None)
        paths = [n.path for n in tree if n.type_name.endswith("-x86_64-cpu")] if tree is not None else []
        if len(paths) < self.topology().cpus:  # a machine assembled without its built-ins
            cfg = self.machine.config
            numbering = pc_unattached_paths(self.topology().cpus, 0, cfg.accel == "kvm")
            paths = [numbering[f"cpu.{k}"] for k in range(self.topology().cpus)]
        return paths

    # -- commands --------------------------------------------------------------------------------------

    def query_cpu_definitions(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        supported = self.supported()
        out = []
        names = [(m.name, m.version) for m in MODELS] + [(m.version, None) for m in MODELS]
        for name, alias in names + [(n, None) for n in SPECIAL_MODELS]:
            entry: dict[str, Any] = {"name": name, "typename": f"{name}-x86_64-cpu",
                                     "unavailable-features": self._unavailable(name, supported),
                                     "static": False, "migration-safe": name not in SPECIAL_MODELS,
                                     "deprecated": False}
            if alias:
                entry["alias-of"] = alias
            out.append(entry)
        return out

    @staticmethod
    def _unavailable(name: str, supported: list[Entry]) -> list[str]:
        if not supported or name in SPECIAL_MODELS:
            return []
        return plan_cpu(CpuSpec(model=name, check=False), supported).unavailable

    def query_cpu_model_expansion(self, args: dict[str, Any]) -> dict[str, Any]:
        kind = args["type"]
        if kind not in EXPANSION_TYPES:
            raise QmpError(f"Parameter 'type' does not accept value '{kind}'")
        model = args["model"]
        name = model.get("name")
        if not isinstance(name, str):
            raise QmpError("Parameter 'model.name' is missing" if name is None else
                           "Invalid parameter type for 'model.name', expected: string")
        if name not in MODEL_BY_NAME and name not in SPECIAL_MODELS:
            raise QmpError(f"CPU model '{name}' not found")
        props = model.get("props") or {}
        if not isinstance(props, dict):
            raise QmpError("Invalid parameter type for 'model.props', expected: object")
        items = []
        for key, value in props.items():
            if canonical(key) is None:
                raise QmpError(f"Property '{name}-x86_64-cpu.{key}' not found")
            if not isinstance(value, bool):
                raise QmpError(f"Invalid parameter type for '{key}', expected: boolean")
            items.append(f"{key}={'on' if value else 'off'}")
        try:
            spec = parse_cpu(",".join([name, *items]))
        except CpuSpecError as err:
            raise QmpError(str(err)) from None
        spec.check = False
        plan = self._as_dict(plan_cpu(spec, self.supported())) if spec.model in SPECIAL_MODELS else \
            self._unfiltered(spec)
        features = {}
        for feat in all_names():
            key, bit = FEATURE_BITS[feat]
            features[feat] = bool(plan["words"].get(key, 0) >> bit & 1)
        if kind == "static":
            return {"model": {"name": "base", "props": {**features, **plan["identity"]}}}
        return {"model": {"name": name, "props": {**features, **plan["identity"]}}}

    def _unfiltered(self, spec: CpuSpec) -> dict[str, Any]:
        """A named model's features as defined (QEMU's expansion does not filter) and its identity."""
        plan = plan_cpu(spec, [(w.leaf, w.subleaf, 1, *([0xFFFFFFFF] * 4)) for w in _words()])
        return self._as_dict(plan)

    def _as_dict(self, plan: Any) -> dict[str, Any]:
        ident = plan.identity
        vendor = host_identity(self.supported()).vendor if self.supported() else ident.vendor
        return {"words": plan.words, "identity": {"vendor": vendor, "family": ident.family, "model": ident.model,
                                                  "stepping": ident.stepping, "model-id": ident.model_id,
                                                  "level": ident.level, "xlevel": ident.xlevel}}

    def query_cpus_fast(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        topo = self.topology()
        runners = getattr(self.machine, "_runners", [])
        paths = self.cpu_paths()
        out = []
        for index in range(topo.cpus):
            tid = getattr(runners[index], "native_id", None) if index < len(runners) else None
            out.append({"thread-id": tid or os.getpid(), "props": self._props(topo, index),
                        "qom-path": paths[index], "cpu-index": index, "target": "x86_64"})
        return out

    def query_hotpluggable_cpus(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """Every possible CPU slot (maxcpus), the highest first as QEMU lists them; present ones carry their path."""
        topo = self.topology()
        paths = self.cpu_paths()
        out = []
        for index in reversed(range(topo.maxcpus)):
            entry: dict[str, Any] = {"props": self._props(topo, index), "vcpus-count": 1}
            if index < topo.cpus:
                entry["qom-path"] = paths[index]
            entry["type"] = self.cpu_type()
            out.append(entry)
        return out

    @staticmethod
    def _props(topo: Topology, index: int) -> dict[str, int]:
        socket, die, core, thread = topo.ids(index)
        props = {"core-id": core, "thread-id": thread, "socket-id": socket}
        if topo.dies > 1:
            props["die-id"] = die
        return props


def _words() -> list[Any]:
    from refvm.cpu.features import WORDS

    return list(WORDS)
