"""Declarative machine descriptions for the PCI part, and the device-model registry.

A description is a list of entries (or a mapping whose ``pci`` key holds that
list, the shape ``[[pci]]`` tables take in TOML)::

    [
        {"model": "edu", "address": "0000:00:10.0", "options": {"dma_mask": 32}},
        {"model": "edu", "count": 2},           # two more, at free addresses
    ]

Keys: ``model`` (required), ``address``, ``count`` (default 1; not with
``address``), ``options`` (keyword arguments of the model's factory, checked
against its signature and annotations). Entries without an address get the free
``0000:00:dd.0`` slots left over after every explicit address is reserved.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping

from ..errors import AlreadyExists, InvalidArgument
from .address import PciAddress
from .device import SimDevice
from .edu import EduDevice

__all__ = [
    "DeviceFactory",
    "create_device",
    "device_models",
    "parse_description",
    "register_device_model",
]

#: Builds a device model from keyword options.
DeviceFactory = Callable[..., SimDevice]

_MODELS: dict[str, DeviceFactory] = {}
_ENTRY_KEYS = frozenset({"model", "address", "count", "options"})


def register_device_model(name: str, factory: DeviceFactory, *, replace: bool = False) -> None:
    """Make ``factory`` available to descriptions and ``hot_add`` as ``name``.

    Args:
        name: The model name (``edu``).
        factory: A :class:`SimDevice` subclass or a callable returning one; its
            keyword parameters are the model's options.
        replace: Allow replacing an existing registration.

    Raises:
        InvalidArgument: ``name`` is empty.
        AlreadyExists: ``name`` is taken and ``replace`` is false.
    """
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"device model name {name!r} is empty")
    if name in _MODELS and not replace:
        raise AlreadyExists(f"device model {name!r} is already registered")
    _MODELS[name] = factory


def device_models() -> dict[str, DeviceFactory]:
    """The registered models by name."""
    return dict(_MODELS)


def _type_ok(value: object, hint: object) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(
            value is None if arg is type(None) else _type_ok(value, arg)
            for arg in typing.get_args(hint)
        )
    return True  # a type we cannot check from data: the factory validates it


def _check_options(name: str, factory: DeviceFactory, options: Mapping[str, object]) -> None:
    try:
        params = inspect.signature(factory, eval_str=True).parameters
    except (NameError, TypeError):  # annotations that do not resolve: check names only
        params = inspect.signature(factory).parameters
    hints = {k: p.annotation for k, p in params.items() if p.annotation is not p.empty}
    open_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key, value in options.items():
        if not isinstance(key, str):
            raise InvalidArgument(f"model {name!r}: option name {key!r} is not a string")
        if key not in params and not open_kwargs:
            raise InvalidArgument(f"model {name!r}: unknown option {key!r}")
        if key in hints and not _type_ok(value, hints[key]):
            raise InvalidArgument(
                f"model {name!r}: option {key!r}={value!r} is not of type {hints[key]}"
            )


def create_device(name: str, options: Mapping[str, object]) -> SimDevice:
    """Build a registered model with ``options``.

    Raises:
        InvalidArgument: unknown model, unknown option, wrong option type, or a
            value the model refuses.
    """
    factory = _MODELS.get(name)
    if factory is None:
        raise InvalidArgument(f"unknown device model {name!r}")
    _check_options(name, factory, options)
    try:
        device = factory(**options)
    except TypeError as exc:  # e.g. a required option is missing
        raise InvalidArgument(f"model {name!r}: {exc}") from None
    if not isinstance(device, SimDevice):
        raise InvalidArgument(f"model {name!r} factory returned {type(device).__name__}")
    return device


def _entries(description: object) -> list[object]:
    if isinstance(description, Mapping):
        if "pci" not in description:
            raise InvalidArgument("machine description mapping has no 'pci' list")
        description = description["pci"]
    if isinstance(description, str | bytes) or not isinstance(description, Iterable):
        raise InvalidArgument(f"machine description {description!r} is not a list of entries")
    return list(description)


def parse_description(
    description: object,
    taken: set[PciAddress] | None = None,
) -> list[tuple[SimDevice, PciAddress]]:
    """Validate a description and build its devices, with their addresses.

    Args:
        description: The entries (see the module docstring).
        taken: Addresses already occupied on the bus.

    Returns:
        ``(device, address)`` per device, in description order.

    Raises:
        InvalidArgument: a malformed entry; the message names its index and key.
    """
    used = set(taken or ())
    planned: list[tuple[SimDevice, PciAddress | None]] = []
    for index, entry in enumerate(_entries(description)):
        where = f"machine entry {index}"
        if not isinstance(entry, Mapping):
            raise InvalidArgument(f"{where}: {entry!r} is not a table")
        unknown = sorted(set(entry) - _ENTRY_KEYS, key=str)
        if unknown:
            raise InvalidArgument(f"{where}: unknown key {unknown[0]!r}")
        model = entry.get("model")
        if not isinstance(model, str):
            raise InvalidArgument(f"{where}: key 'model' must be a string, not {model!r}")
        where = f"{where} (model {model!r})"
        count = entry.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidArgument(f"{where}: key 'count' must be a positive integer, not {count!r}")
        options = entry.get("options", {})
        if not isinstance(options, Mapping):
            raise InvalidArgument(f"{where}: key 'options' must be a table, not {options!r}")
        address: PciAddress | None = None
        if "address" in entry:
            if count != 1:
                raise InvalidArgument(f"{where}: key 'address' cannot be used with count {count}")
            try:
                address = PciAddress.parse(entry["address"])
            except InvalidArgument as exc:
                raise InvalidArgument(f"{where}: key 'address': {exc.strerror}") from None
            if address in used:
                raise InvalidArgument(f"{where}: key 'address': {address} is already in use")
            used.add(address)
        for _ in range(count):
            try:
                device = create_device(model, options)
            except InvalidArgument as exc:
                raise InvalidArgument(f"{where}: {exc.strerror}") from None
            planned.append((device, address))
    result: list[tuple[SimDevice, PciAddress]] = []
    for device, fixed in planned:
        address = fixed if fixed is not None else _free_slot(used)
        used.add(address)
        result.append((device, address))
    return result


def _free_slot(used: set[PciAddress]) -> PciAddress:
    busy = {a.device for a in used if a.domain == 0 and a.bus == 0}
    slot = next((d for d in range(1, 32) if d not in busy), None)
    if slot is None:
        raise InvalidArgument("machine description needs more than 31 slots on bus 0000:00")
    return PciAddress(0, 0, slot, 0)


register_device_model("edu", EduDevice)
