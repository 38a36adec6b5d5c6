"""KFD topology in sysfs: ``/sys/class/kfd/kfd/topology`` (``kfd_topology.c``).

Node 0 is the CPU; GPU nodes follow in the order the GPUs were probed. Each node
has ``gpu_id``, ``name``, ``properties`` ("key value" lines, in the kernel's
order), ``mem_banks/0``, ``caches/0`` and ``io_links/0`` (a PCIe link to the
CPU). ``generation_id`` is bumped whenever a GPU comes or goes, so readers
(libhsakmt) can detect a change while they walk the nodes and retry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from accelcore import Attribute, AttributeGroup, SysfsNode, SysfsTree

from .process import GpuNode

__all__ = ["KFD_CHAR_MAJOR", "Topology"]

#: ``/dev/kfd``'s character major (dynamic in the kernel; fixed here).
KFD_CHAR_MAJOR = 240
_PREFIX = "topology/nodes/"
_IOLINK_TYPE_PCIEXPRESS = 2
_HEAP_TYPE_FB_PUBLIC = 1


def _lines(pairs: Sequence[tuple[str, int]]) -> str:
    return "\n".join(f"{k} {v}" for k, v in pairs)


def _gpu_properties(n: GpuNode, node_id: int) -> list[tuple[str, int]]:
    fn_addr = n.dev.parent.address if n.dev.parent is not None else None
    location = 0
    if fn_addr is not None:
        bus, dev, fn = (int(getattr(fn_addr, k)) for k in ("bus", "device", "function"))
        location = (bus << 8) | (dev << 3) | fn
    return [
        ("cpu_cores_count", 0),
        ("simd_count", 416),
        ("mem_banks_count", 1),
        ("caches_count", 1),
        ("io_links_count", 1),
        ("p2p_links_count", 0),
        ("cpu_core_id_base", 0),
        ("simd_id_base", 0x80000000 + 16 * node_id),
        ("max_waves_per_simd", 8),
        ("lds_size_in_kb", 64),
        ("gds_size_in_kb", 0),
        ("num_gws", 64),
        ("wave_front_size", 64),
        ("array_count", 8),
        ("simd_arrays_per_engine", 1),
        ("cu_per_simd_array", 13),
        ("simd_per_cu", 4),
        ("max_slots_scratch_cu", 32),
        ("gfx_target_version", 90010),
        ("vendor_id", n.gpu.vendor_id),
        ("device_id", n.gpu.device_id),
        ("location_id", location),
        ("domain", 0),
        ("drm_render_minor", n.dev.minor),
        ("hive_id", 0),
        ("num_sdma_engines", 1),
        ("num_sdma_xgmi_engines", 0),
        ("num_sdma_queues_per_engine", 8),
        ("num_cp_queues", 24),
        ("max_engine_clk_fcompute", 1700),
        ("local_mem_size", 0),
        ("fw_version", 78),
        ("capability", 0),
        ("sdma_fw_version", 8),
        ("unique_id", n.gpu_id),
        ("max_engine_clk_ccompute", 3000),
    ]


_CPU_PROPERTIES = [
    ("cpu_cores_count", 16),
    ("simd_count", 0),
    ("mem_banks_count", 1),
    ("caches_count", 0),
    ("io_links_count", 0),
    ("p2p_links_count", 0),
    ("cpu_core_id_base", 0),
    ("simd_id_base", 0),
    ("max_waves_per_simd", 0),
    ("lds_size_in_kb", 0),
    ("gds_size_in_kb", 0),
    ("num_gws", 0),
    ("wave_front_size", 0),
    ("array_count", 0),
    ("simd_arrays_per_engine", 0),
    ("cu_per_simd_array", 0),
    ("simd_per_cu", 0),
    ("max_slots_scratch_cu", 0),
    ("gfx_target_version", 0),
    ("vendor_id", 0),
    ("device_id", 0),
    ("location_id", 0),
    ("domain", 0),
    ("drm_render_minor", 0),
    ("hive_id", 0),
    ("num_sdma_engines", 0),
    ("num_sdma_xgmi_engines", 0),
    ("num_sdma_queues_per_engine", 0),
    ("num_cp_queues", 0),
    ("max_engine_clk_ccompute", 3000),
]


class Topology:
    """The ``kfd`` sysfs node and its topology attributes.

    Args:
        sysfs: The tree to publish in.
        nodes: Returns the GPUs, in node order (node ``i + 1`` is GPU ``i``).
    """

    def __init__(self, sysfs: SysfsTree, nodes: Callable[[], Sequence[GpuNode]]) -> None:
        self.sysfs = sysfs
        self._nodes = nodes
        self.generation = 1
        self.node = SysfsNode(
            "kfd",
            subsystem="kfd",
            kind="class",
            subdir="virtual/kfd",
            devnum=(KFD_CHAR_MAJOR, 0),
            devname="kfd",
        )
        self.node.add_group(
            AttributeGroup(
                (
                    Attribute.ro("generation_id", lambda: str(self.generation)),
                    Attribute.ro(
                        "system_properties", lambda: "platform_oem 0\nplatform_id 0\nplatform_rev 0"
                    ),
                ),
                "topology",
            )
        )
        self._rebuild()
        sysfs.add(self.node)

    def changed(self) -> None:
        """A GPU came or went: rebuild the nodes and bump ``generation_id``."""
        self.generation += 1
        self._rebuild()
        if self.node in self.sysfs:
            self.sysfs.emit("change", self.node, {"KFD_TOPOLOGY": str(self.generation)})

    def remove(self) -> None:
        if self.node in self.sysfs:
            self.sysfs.remove(self.node)

    def _rebuild(self) -> None:
        for name in [a for a in self.node.attributes if a.startswith(_PREFIX)]:
            self.node.remove_attribute(name)
        self._add_node(0, "0", "", _CPU_PROPERTIES, None)
        for i, n in enumerate(self._nodes(), start=1):
            self._add_node(i, str(n.gpu_id), n.name, _gpu_properties(n, i), n)

    def _add_node(
        self, index: int, gpu_id: str, name: str, props: list[tuple[str, int]], n: GpuNode | None
    ) -> None:
        base = f"{_PREFIX}{index}"
        text = _lines(props)
        self.node.add_group(
            AttributeGroup(
                (
                    Attribute.ro("gpu_id", lambda: gpu_id),
                    Attribute.ro("name", lambda: name),
                    Attribute.ro("properties", lambda: text),
                ),
                base,
            )
        )
        size = n.gpu.vram_size if n is not None else 1 << 34
        bank = _lines(
            [
                ("heap_type", _HEAP_TYPE_FB_PUBLIC if n is not None else 0),
                ("size_in_bytes", size),
                ("flags", 0),
                ("width", 4096),
                ("mem_clk_max", 1600),
            ]
        )
        self.node.add_group(
            AttributeGroup((Attribute.ro("properties", lambda: bank),), f"{base}/mem_banks/0")
        )
        if n is None:
            return
        cache = _lines(
            [
                ("processor_id_low", 0x80000000 + 16 * index),
                ("level", 2),
                ("size", 8192),
                ("cache_line_size", 128),
                ("cache_lines_per_tag", 1),
                ("association", 16),
                ("latency", 0),
                ("type", 1),
            ]
        )
        self.node.add_group(
            AttributeGroup(
                (Attribute.ro("properties", lambda: cache + "\nsibling_map 1"),), f"{base}/caches/0"
            )
        )
        link = _lines(
            [
                ("type", _IOLINK_TYPE_PCIEXPRESS),
                ("version_major", 0),
                ("version_minor", 0),
                ("node_from", index),
                ("node_to", 0),
                ("weight", 20),
                ("min_latency", 0),
                ("max_latency", 0),
                ("min_bandwidth", 0),
                ("max_bandwidth", 0),
                ("recommended_transfer_size", 0),
                ("flags", 1),
            ]
        )
        self.node.add_group(
            AttributeGroup((Attribute.ro("properties", lambda: link),), f"{base}/io_links/0")
        )
