"""What habana_like tells monitoring tools: INFO queries, sysfs, regions, engines.

The ``HLK_INFO_*`` queries extend the core's ``ACCEL_IOCTL_INFO`` (so they work
for every opener, on the control node and during a reset), after habanalabs'
``_hl_info_ioctl``. ``HW_IDLE`` and ``CLK_RATE`` need an operational device
(``EBUSY`` otherwise), the others always answer. The sysfs attributes tell the
same story as INFO: ``status`` is the INFO device status as habanalabs' string,
``ecc_*`` are the ``HLK_EVENT_ECC_*`` counters, ``hard_reset`` (root,
write-only) is ``dev.reset()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from accelcore import (
    NSEC_PER_MSEC,
    AccelDevice,
    AccelFile,
    Attribute,
    AttributeGroup,
    Busy,
    DeviceStatus,
    EngineInfo,
    InvalidArgument,
    IoctlCall,
    MemoryRegionInfo,
    info_query,
)

from .uapi import HLK

if TYPE_CHECKING:
    from .context import Context, DeviceState

__all__ = ["FIRMWARE", "STATUS_NAMES", "InfoMixin"]

#: habanalabs' sysfs ``status`` strings, by INFO device status.
STATUS_NAMES = {
    HLK.HLK_DEVICE_STATUS_OPERATIONAL: "operational",
    HLK.HLK_DEVICE_STATUS_IN_RESET: "in reset",
    HLK.HLK_DEVICE_STATUS_MALFUNCTION: "disabled",
    HLK.HLK_DEVICE_STATUS_NEEDS_RESET: "needs reset",
}
#: Simulated firmware versions (sysfs and ``hw_ip_info.cpucp_version``).
FIRMWARE = {
    "armcp_ver": "armcp-hlk-1.4.0",
    "cpucp_ver": "cpucp-hlk-1.4.0",
    "uboot_ver": "U-Boot 2021.04-hlk",
    "cpld_ver": "0x00000010",
    "infineon_ver": "0x0004",
}
CARD_NAME = "HLK-1000"
IDLE_CLK_MHZ = 500
IDLE_POWER_MW = 90_000
ENGINE_POWER_MW = 60_000


def _st(dev: AccelDevice) -> DeviceState:
    st: DeviceState = dev.private
    return st


def device_status(dev: AccelDevice) -> int:
    """The INFO / sysfs device status (``HLK_DEVICE_STATUS_*``) of ``dev``."""
    status = dev.status
    if status == DeviceStatus.UNPLUGGED:
        return int(HLK.HLK_DEVICE_STATUS_MALFUNCTION)
    return int(status)  # the core's first four values are habanalabs' values


def _operational(dev: AccelDevice, what: str) -> None:
    if dev.status != DeviceStatus.OPERATIONAL:
        raise Busy(f"device is {STATUS_NAMES[device_status(dev)]}; can't answer {what}")


class InfoMixin:
    """INFO queries and sysfs of :class:`~drivers.habana_like.driver.HabanaLikeDriver`."""

    @info_query("HLK_INFO_HW_IP_INFO", "struct hlk_info_hw_ip_info")
    def info_hw_ip(self, call: IoctlCall, dev: AccelDevice) -> Any:
        st = _st(dev)
        a = HLK.new("struct hlk_info_hw_ip_info")
        a.dram_base_address = HLK.HLK_DRAM_VA_BASE
        a.dram_size = st.allocator.size
        a.dram_page_size = st.allocator.page
        a.device_id = st.model.device_id
        a.num_of_events = HLK.HLK_NUM_EVENTS
        a.num_dma_engines = sum(e.kind == "dma" for e in st.model.engines)
        a.num_compute_engines = sum(e.kind == "compute" for e in st.model.engines)
        a.max_jobs_per_cs = HLK.HLK_MAX_JOBS_PER_CS
        a.max_pending_cs = HLK.HLK_MAX_PENDING_CS
        a.cpucp_version = FIRMWARE["cpucp_ver"].encode()
        a.card_name = CARD_NAME.encode()
        return a

    @info_query("HLK_INFO_HW_EVENTS")
    def info_hw_events(self, call: IoctlCall, dev: AccelDevice) -> bytes:
        return b"".join(int(n).to_bytes(4, "little") for n in _st(dev).model.events)

    @info_query("HLK_INFO_DRAM_USAGE", "struct hlk_info_dram_usage")
    def info_dram_usage(self, call: IoctlCall, dev: AccelDevice) -> Any:
        st = _st(dev)
        ctx: Context | None = call.file.context
        return HLK.new(
            "struct hlk_info_dram_usage",
            dram_free_mem=st.allocator.free_bytes,
            ctx_dram_mem=ctx.dram_bytes if ctx is not None else 0,
        )

    @info_query("HLK_INFO_HW_IDLE", "struct hlk_info_hw_idle")
    def info_hw_idle(self, call: IoctlCall, dev: AccelDevice) -> Any:
        _operational(dev, "HW_IDLE")
        mask = _st(dev).model.busy_mask()
        return HLK.new("struct hlk_info_hw_idle", is_idle=int(mask == 0), busy_engines_mask=mask)

    @info_query("HLK_INFO_DEVICE_STATUS", "struct hlk_info_device_status", unplugged_ok=True)
    def info_device_status(self, call: IoctlCall, dev: AccelDevice) -> Any:
        return HLK.new("struct hlk_info_device_status", status=device_status(dev))

    @info_query("HLK_INFO_OPEN_STATS", "struct hlk_open_stats_info")
    def info_open_stats(self, call: IoctlCall, dev: AccelDevice) -> Any:
        st = _st(dev)
        period = (dev.subsystem.clock.now() - st.last_open_ns) // NSEC_PER_MSEC
        return HLK.new(
            "struct hlk_open_stats_info",
            open_counter=dev.opens_total,
            last_open_period_ms=period,
            is_compute_ctx_active=int(dev.ownership.owner is not None),
            compute_ctx_in_release=0,
        )

    @info_query("HLK_INFO_CLK_RATE", "struct hlk_info_clk_rate")
    def info_clk_rate(self, call: IoctlCall, dev: AccelDevice) -> Any:
        _operational(dev, "CLK_RATE")
        return HLK.new(
            "struct hlk_info_clk_rate",
            cur_clk_rate_mhz=self._cur_clk(dev),
            max_clk_rate_mhz=_st(dev).clk_max_mhz,
        )

    @info_query("HLK_INFO_RESET_COUNT", "struct hlk_info_reset_count")
    def info_reset_count(self, call: IoctlCall, dev: AccelDevice) -> Any:
        return HLK.new(
            "struct hlk_info_reset_count", hard_reset_cnt=dev.reset_count, soft_reset_cnt=0
        )

    # -- derived simulated values --------------------------------------------------------
    @staticmethod
    def _cur_clk(dev: AccelDevice) -> int:
        st = _st(dev)
        return st.clk_max_mhz if st.model.busy_mask() else min(IDLE_CLK_MHZ, st.clk_max_mhz)

    @staticmethod
    def _power_mw(dev: AccelDevice) -> int:
        st = _st(dev)
        busy = bin(st.model.busy_mask()).count("1")
        return min(st.max_power_mw, IDLE_POWER_MW + busy * ENGINE_POWER_MW)

    # -- core INFO hooks --------------------------------------------------------------------
    def memory_regions(self, dev: AccelDevice) -> Sequence[MemoryRegionInfo]:
        st = _st(dev)
        return [MemoryRegionInfo("dram", st.allocator.size, st.allocator.used)]

    def engines(self, dev: AccelDevice) -> Sequence[EngineInfo]:
        return [
            EngineInfo(
                e.name, 0 if e.kind == "dma" else 1, e.busy, e.busy_ns, e.submitted, e.completed
            )
            for e in _st(dev).model.engines
        ]

    def fdinfo(self, file: AccelFile) -> dict[str, str]:
        ctx: Context | None = file.context
        lines = {"drm-total-dram": f"{(ctx.dram_bytes if ctx else 0) // 1024} KiB"}
        return lines

    # -- sysfs -------------------------------------------------------------------------------
    def attribute_groups(self, dev: AccelDevice) -> Sequence[AttributeGroup]:
        st = _st(dev)

        def store_clk(value: str) -> None:
            mhz = _parse_int(value, "clk_max_freq_mhz")
            if not 100 <= mhz <= 2000:
                raise InvalidArgument(f"clk_max_freq_mhz {mhz} is outside 100..2000")
            st.clk_max_mhz = mhz

        def store_power(value: str) -> None:
            mw = _parse_int(value, "max_power")
            if not IDLE_POWER_MW <= mw <= 1_000_000:
                raise InvalidArgument(f"max_power {mw} mW is outside {IDLE_POWER_MW}..1000000")
            st.max_power_mw = mw

        def store_reset(value: str) -> None:
            if _parse_int(value, "hard_reset") != 1:
                raise InvalidArgument("write 1 to hard_reset")
            dev.reset("sysfs hard_reset")

        attrs = [
            Attribute.ro("status", lambda: STATUS_NAMES[device_status(dev)]),
            Attribute.ro("serial", lambda: st.model.serial),
            Attribute.ro("device_type", lambda: CARD_NAME),
            Attribute.ro("clk_cur_freq_mhz", lambda: str(self._cur_clk(dev))),
            Attribute.rw("clk_max_freq_mhz", lambda: str(st.clk_max_mhz), store_clk),
            Attribute.ro("power_mw", lambda: str(self._power_mw(dev))),
            Attribute.rw("max_power", lambda: str(st.max_power_mw), store_power),
            Attribute.ro("ecc_serr_count", lambda: str(st.model.events[HLK.HLK_EVENT_ECC_SERR])),
            Attribute.ro("ecc_derr_count", lambda: str(st.model.events[HLK.HLK_EVENT_ECC_DERR])),
            Attribute.ro("reset_count", lambda: str(dev.reset_count)),
            Attribute.wo("hard_reset", store_reset),
        ]
        attrs += [Attribute.ro(name, _const(value)) for name, value in FIRMWARE.items()]
        return [AttributeGroup(tuple(attrs))]


def _const(value: str) -> Callable[[], str]:
    return lambda: value


def _parse_int(value: str, name: str) -> int:
    try:
        return int(value.strip(), 0)
    except ValueError:
        raise InvalidArgument(f"{name}: {value.strip()!r} is not an integer") from None
