"""The devices this server can place replicas on: real NVIDIA GPUs, virtual GPUs, CPU slots.

Real GPUs come from `nvidia-smi`; virtual ones are declared with `--gpus "A100-80GB:8"` so that
development and tests on machines without GPUs exercise the same placement logic (replicas on a
virtual GPU run their engine on the CPU). The `CPU` type is always offered with a configurable
number of slots. `Inventory` itself is an immutable snapshot; discovery is the only I/O here.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from modelhost.domain.replicas import CPU_TYPE, Device
from modelhost.orchestrator.types import ReplicaObservation

log = logging.getLogger(__name__)

NVIDIA_SMI_ARGS = ("--query-gpu=index,name,memory.total", "--format=csv,noheader")

_TYPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# GPU families and the memory sizes they are sold with (GB, as in the type names). The size a
# card reports in MiB is a little off its marketing size (an L4 reports 22.5 GiB, an H200
# 140.4 GiB), so the reported size is snapped to the family's nearest marketed size.
_FAMILIES: tuple[tuple[re.Pattern[str], str, tuple[int, ...]], ...] = (
    (re.compile(r"\bH200\b"), "H200", (141,)),
    (re.compile(r"\bH100\b"), "H100", (80, 94)),
    (re.compile(r"\bB200\b"), "B200", (180,)),
    (re.compile(r"\bA100\b"), "A100", (40, 80)),
    (re.compile(r"\bL40S\b"), "L40S", (48,)),
    (re.compile(r"\bL40\b"), "L40", (48,)),
    (re.compile(r"\bL4\b"), "L4", (24,)),
    (re.compile(r"\bRTX\s*PRO\s*6000\b"), "RTXPRO6000", (96,)),
    (re.compile(r"\bRTX\s*4090\b"), "RTX4090", (24,)),
    (re.compile(r"\bRTX\s*3090\b"), "RTX3090", (24,)),
    (re.compile(r"\bA10G\b"), "A10G", (24,)),
    (re.compile(r"\bA10\b"), "A10", (24,)),
    (re.compile(r"\bV100\b"), "V100", (16, 32)),
    (re.compile(r"\bT4\b"), "T4", (16,)),
)
_VENDOR_WORDS = re.compile(r"\b(NVIDIA|TESLA|GEFORCE|QUADRO)\b")
_MEMORY_WORDS = re.compile(r"\b\d+\s*GB\b|\bHBM\d*E?\b|\bPCIE\b|\bSXM\d*\b")


class InventoryError(ValueError):
    """A device declaration the server cannot use (bad `--gpus` spec, name clash)."""


@dataclass(frozen=True)
class GpuInfo:
    """One line of nvidia-smi output."""

    index: int
    name: str
    memory_mib: int


def gpu_type_for(name: str, memory_mib: int) -> str:
    """Map an nvidia-smi marketing name and memory size to a type name like `H100-80GB`."""
    upper = name.upper()
    gib = memory_mib / 1024
    for pattern, family, sizes in _FAMILIES:
        if pattern.search(upper):
            size = min(sizes, key=lambda s: abs(s - gib))
            return f"{family}-{size}GB"
    # Unknown card: its marketing name without vendor words or memory tokens, plus its memory.
    stripped = _MEMORY_WORDS.sub(" ", _VENDOR_WORDS.sub(" ", upper))
    base = re.sub(r"[^A-Z0-9]", "", stripped) or "GPU"
    return f"{base}-{round(gib)}GB"


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    """Parse `nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader` output.

    Lines look like `0, NVIDIA H100 80GB HBM3, 81559 MiB`. Malformed lines are skipped with a
    warning rather than failing the server: a GPU we cannot read is a GPU we do not offer.
    """
    gpus: list[GpuInfo] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3:
            log.warning("ignoring unreadable nvidia-smi line: %r", line)
            continue
        index_s, memory_s, name = parts[0], parts[-1], ", ".join(parts[1:-1])
        mem_match = re.match(r"^(\d+)\s*MiB$", memory_s, re.IGNORECASE)
        if not index_s.isdigit() or not name:
            log.warning("ignoring unreadable nvidia-smi line: %r", line)
            continue
        gpus.append(GpuInfo(int(index_s), name, int(mem_match.group(1)) if mem_match else 0))
    return gpus


def parse_virtual_spec(spec: str) -> list[tuple[str, int]]:
    """Parse `"A100-80GB:8,H100-80GB:4"` (a missing count means 1) into (type, count) pairs."""
    result: list[tuple[str, int]] = []
    seen: set[str] = set()
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, count_s = item.partition(":")
        name = name.strip()
        if not _TYPE_NAME.match(name):
            raise InventoryError(f"invalid GPU type {name!r} in --gpus (e.g. 'A100-80GB:8')")
        if name.upper() == CPU_TYPE:
            raise InventoryError("CPU is always offered; set its slots with --cpu-slots")
        try:
            count = int(count_s) if sep else 1
        except ValueError:
            raise InventoryError(f"invalid count {count_s!r} for {name} in --gpus") from None
        if count < 1:
            raise InventoryError(f"count for {name} in --gpus must be at least 1")
        if name in seen:
            raise InventoryError(f"{name} is listed twice in --gpus")
        seen.add(name)
        result.append((name, count))
    return result


def discover_nvidia(
    run: Callable[[list[str]], str] | None = None,
) -> list[GpuInfo]:
    """The machine's NVIDIA GPUs, or [] where nvidia-smi is absent or fails."""
    if run is None:
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return []

        def run(args: list[str]) -> str:
            out = subprocess.run(
                [exe, *args], capture_output=True, text=True, timeout=15, check=True
            )
            return out.stdout

    try:
        return parse_nvidia_smi(run(list(NVIDIA_SMI_ARGS)))
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed, offering no real GPUs: %s", exc)
        return []


class Inventory:
    """An immutable set of devices grouped by type."""

    def __init__(self, devices: Iterable[Device]) -> None:
        self._devices: dict[str, Device] = {}
        for d in devices:
            if d.device_id in self._devices:
                raise InventoryError(f"duplicate device id {d.device_id}")
            self._devices[d.device_id] = d
        by_type: dict[str, list[Device]] = {}
        for d in self._devices.values():
            by_type.setdefault(d.gpu_type, []).append(d)
        for type_name, members in by_type.items():
            if len({d.virtual for d in members}) > 1 and type_name != CPU_TYPE:
                raise InventoryError(
                    f"{type_name} exists as a real GPU on this machine; "
                    "do not declare virtual devices of it"
                )
            members.sort(key=lambda d: d.index)
        self._by_type = by_type

    @classmethod
    def build(
        cls, gpus: Sequence[GpuInfo], virtual_spec: str = "", cpu_slots: int = 4
    ) -> Inventory:
        devices = [
            Device(f"cuda#{g.index}", gpu_type_for(g.name, g.memory_mib), g.index, False)
            for g in gpus
        ]
        for type_name, count in parse_virtual_spec(virtual_spec):
            devices += [Device(f"{type_name}#{i}", type_name, i, True) for i in range(count)]
        devices += [Device(f"cpu#{i}", CPU_TYPE, i, True) for i in range(max(cpu_slots, 0))]
        return cls(devices)

    @classmethod
    def discover(cls, virtual_spec: str = "", cpu_slots: int = 4, nvidia: bool = True) -> Inventory:
        """Real GPUs (unless `nvidia` is False), virtual ones from the spec, and CPU slots."""
        return cls.build(discover_nvidia() if nvidia else [], virtual_spec, cpu_slots)

    def types(self) -> list[tuple[str, int]]:
        """(type, total devices), GPU types by name, then CPU."""
        names = sorted(self._by_type, key=lambda t: (t == CPU_TYPE, t))
        return [(t, len(self._by_type[t])) for t in names]

    def has_type(self, gpu_type: str) -> bool:
        return gpu_type in self._by_type

    def total(self, gpu_type: str) -> int:
        return len(self._by_type.get(gpu_type, []))

    def is_virtual(self, gpu_type: str) -> bool:
        """True for virtual GPU types and CPU: replicas on them get no CUDA device."""
        members = self._by_type.get(gpu_type)
        return members is None or members[0].virtual

    def device(self, device_id: str) -> Device:
        try:
            return self._devices[device_id]
        except KeyError:
            raise InventoryError(f"unknown device {device_id}") from None

    def type_of(self, device_id: str) -> str | None:
        d = self._devices.get(device_id)
        return d.gpu_type if d else None

    def free(self, observed: Iterable[ReplicaObservation]) -> dict[str, list[str]]:
        """Free device ids per type (every type present, in index order), given the replicas
        that hold devices. Devices of replicas not yet observed gone count as taken."""
        taken = {dev for o in observed if o.holds_devices for dev in o.devices}
        return {
            t: [d.device_id for d in members if d.device_id not in taken]
            for t, members in self._by_type.items()
        }

    def available(self, observed: Iterable[ReplicaObservation]) -> dict[str, int]:
        return {t: len(ids) for t, ids in self.free(observed).items()}

    def summary(self) -> Mapping[str, int]:
        return dict(self.types())
