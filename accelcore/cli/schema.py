"""The JSON contract of ``accelctl <command> --json``, as JSON Schema (draft 2020-12).

JSON output is the stable interface (text tables are not); these schemas are
its documentation and are checked against real output by the tests. Types are
the same in every command: numeric identifiers (``vendor``, ``device``,
``class_code``, ``minor``, pids) are JSON integers, never hex strings; flags
are JSON booleans, never ``"true"``. Streaming
commands (``top``, ``monitor``) print one JSON document per line; their schema
describes one line. :func:`validate` is a small checker for the subset used
here, so that the contract can be checked without extra dependencies.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMAS", "validate"]

Schema = dict[str, Any]


def _obj(
    props: dict[str, Schema], *, required: list[str] | None = None, extra: bool = False
) -> Schema:
    return {
        "type": "object",
        "properties": props,
        "required": sorted(props) if required is None else required,
        "additionalProperties": extra,
    }


def _arr(items: Schema) -> Schema:
    return {"type": "array", "items": items}


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer", "minimum": 0}
BOOL: Schema = {"type": "boolean"}
OPT_STR: Schema = {"type": ["string", "null"]}
OPT_INT: Schema = {"type": ["integer", "null"], "minimum": 0}
STR_MAP: Schema = {"type": "object", "additionalProperties": STR}
STATUS: Schema = {
    "enum": ["operational", "in_reset", "malfunction", "needs_reset", "unplugged", "unknown"]
}
SOURCE: Schema = {"enum": ["sim", "server", "host"]}
HOLDER: Schema = _obj({"pid": INT, "fd": INT})

DEVICE_SUMMARY = _obj(
    {
        "name": STR,
        "minor": OPT_INT,
        "node": OPT_STR,
        "driver": OPT_STR,
        "pci_address": OPT_STR,
        "vendor": OPT_INT,
        "device": OPT_INT,
        "status": STATUS,
        "owner_pid": OPT_INT,
        "open_count": OPT_INT,
        "source": SOURCE,
        "uuid": OPT_STR,
    }
)

IDENTITY = _obj(
    {
        "driver": STR,
        "version": STR,
        "bus_id": STR,
        "minor": INT,
        "vendor": INT,
        "device": INT,
        "subsystem_vendor": INT,
        "subsystem_device": INT,
        "class_code": INT,
        "ownership_policy": STR,
        "features": _arr({"enum": ["gem", "prime", "control_node"]}),
    }
)
STATUS_INFO = _obj(
    {"status": STATUS, "tainted": BOOL, "reset_count": INT, "oops_count": INT, "open_count": INT}
)
OWNERSHIP = _obj(
    {
        "state": {"enum": ["free", "owned", "pinned"]},
        "policy": STR,
        "owner_client_id": OPT_INT,
        "owner_pid": OPT_INT,
        "pin_count": INT,
        "pinned_bytes": INT,
    }
)
CLIENT = _obj(
    {
        "client_id": INT,
        "pid": INT,
        "uid": INT,
        "comm": STR,
        "name": STR,
        "owner": BOOL,
        "control": BOOL,
        "admin": BOOL,
        "handles": INT,
        "memory_bytes": INT,
        "engine_time_ns": INT,
    }
)
MEMORY = _obj({"name": STR, "total_bytes": INT, "used_bytes": INT})
ENGINE = _obj(
    {
        "name": STR,
        "engine_class": INT,
        "busy": BOOL,
        "busy_time_ns": INT,
        "submitted": INT,
        "completed": INT,
    }
)
DEVICE_INFO = _obj(
    {
        "name": STR,
        "node": STR,
        "source": SOURCE,
        "identity": IDENTITY,
        "status": STATUS_INFO,
        "ownership": OWNERSHIP,
        "clients": _arr(CLIENT),
        "memory": _arr(MEMORY),
        "engines": _arr(ENGINE),
        "uuid": OPT_STR,
    }
)

#: A device in the summary (``accelctl`` alone): its INFO, and the totals.
SUMMARY_DEVICE = _obj(
    {
        **DEVICE_INFO["properties"],
        "memory_total_bytes": INT,
        "memory_used_bytes": INT,
        "engines_busy": INT,
    }
)

ATTR_LEVEL = _obj(
    {
        "devpath": STR,
        "kernel": STR,
        "subsystem": OPT_STR,
        "driver": OPT_STR,
        "attributes": _arr(
            _obj(
                {
                    "name": STR,
                    "value": OPT_STR,
                    "mode": STR,
                    "writable": BOOL,
                    "readable": BOOL,
                    "error": OPT_STR,
                }
            )
        ),
    }
)

FILE_RECORD = _obj(
    {
        "device": STR,
        "pid": INT,
        "comm": STR,
        "uid": INT,
        "client_id": INT,
        "owner": BOOL,
        "control": BOOL,
        "holders": _arr(HOLDER),
        "fdinfo": STR_MAP,
        # every drm-<kind>-<region> fdinfo key, in bytes, by region then kind
        "memory": {
            "type": "object",
            "additionalProperties": {"type": "object", "additionalProperties": INT},
        },
        "memory_total_bytes": INT,
        "memory_resident_bytes": INT,
        "engine_time_ns": INT,
    }
)

BUFFER = _obj(
    {
        "ino": INT,
        "size": INT,
        "flags": INT,
        "count": INT,
        "exp_name": STR,
        "exporter": STR,
        "name": STR,
        "revoked": BOOL,
        "pins": _arr(STR),
        "attachments": _arr(STR),
        "fences": _arr(
            _obj({"usage": STR, "driver": STR, "timeline": STR, "seqno": INT, "signalled": BOOL})
        ),
        "holders": _arr(HOLDER),
    }
)

PCI_FUNCTION = _obj(
    {
        "address": STR,
        "vendor": OPT_INT,
        "device": OPT_INT,
        "class_code": OPT_INT,
        "driver": OPT_STR,
        "accel": _arr(STR),
    }
)

UEVENT = _obj({"action": STR, "devpath": STR, "subsystem": STR, "seqnum": INT, "env": STR_MAP})

TOP_DEVICE = _obj(
    {
        "name": STR,
        "status": STATUS,
        "owner_pid": OPT_INT,
        "clients": INT,
        "memory_used_bytes": INT,
        "memory_total_bytes": INT,
        "memory": _arr(MEMORY),
        "engines": _arr(ENGINE),
    }
)

DEMO_CHECK = _obj({"name": STR, "ok": BOOL, "detail": STR})
DEMO_STEP = _obj(
    {
        "name": STR,
        "title": STR,
        "ok": BOOL,
        "elapsed_ms": {"type": "number"},
        "lines": _arr(STR),
        "checks": _arr(DEMO_CHECK),
        "error": OPT_STR,
    }
)

SIM_DEVICE = _obj(
    {"name": STR, "driver": STR, "bus_id": STR, "node": STR, "status": STATUS, "socket": STR}
)
SIM_STATUS = _obj(
    {
        "running": BOOL,
        "runtime_dir": STR,
        "pid": INT,
        "version": STR,
        "protocol": INT,
        "clock": STR,
        "sessions": INT,
        "open_files": INT,
        "machine": {"type": ["object", "null"]},
        "accounting": {"type": "object", "additionalProperties": INT},
        "devices": _arr(SIM_DEVICE),
    },
    required=["running", "runtime_dir"],
)

#: Schemas by command; a streaming command's schema describes one line.
SCHEMAS: dict[str, Schema] = {
    "summary": _obj({"accelctl": STR, "source": SOURCE, "devices": _arr(SUMMARY_DEVICE)}),
    "list": _obj({"devices": _arr(DEVICE_SUMMARY)}),
    "info": _obj({"devices": _arr(DEVICE_INFO)}),
    "attrs": _obj({"device": STR, "levels": _arr(ATTR_LEVEL)}),
    "attrs-store": _obj({"device": STR, "devpath": STR, "attribute": STR, "value": STR}),
    "ps": _obj({"files": _arr(FILE_RECORD)}),
    "top": _obj({"iteration": INT, "timestamp_ns": INT, "devices": _arr(TOP_DEVICE)}),
    "monitor": UEVENT,
    "reset": _obj({"device": STR, "reason": STR, "status": STATUS, "reset_count": INT}),
    "dmabuf": _obj({"buffers": _arr(BUFFER), "total_size": INT}),
    "topology": _obj(
        {
            "roots": _arr(_obj({"name": STR, "functions": _arr(PCI_FUNCTION)})),
            "virtual": _arr(STR),
        }
    ),
    "version": _obj(
        {
            "accelctl": STR,
            "accelcore": STR,
            "python": STR,
            "click": STR,
            "source": SOURCE,
            "drivers": _arr(
                _obj(
                    {
                        "name": STR,
                        "version": STR,
                        "desc": STR,
                        "control_node": BOOL,
                    }
                )
            ),
            "installed_drivers": STR_MAP,
        }
    ),
    "sim-start": _obj({"pid": INT, "runtime_dir": STR, "devices": _arr(SIM_DEVICE)}),
    "sim-stop": _obj({"pid": INT, "runtime_dir": STR, "stopped": BOOL}),
    "sim-status": SIM_STATUS,
    "demo": _obj({"ok": BOOL, "elapsed_ms": {"type": "number"}, "steps": _arr(DEMO_STEP)}),
}

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "null": (type(None),),
}


def _type_ok(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[name])


def validate(instance: Any, schema: Schema, path: str = "$") -> list[str]:
    """Check ``instance`` against ``schema``; returns the problems (empty when valid).

    Supports what :data:`SCHEMAS` uses: ``type`` (one or a list), ``enum``,
    ``minimum``, ``properties``, ``required``, ``additionalProperties`` (bool or
    schema) and ``items``.
    """
    errors: list[str] = []
    if "enum" in schema and instance not in schema["enum"]:
        return [f"{path}: {instance!r} is not one of {schema['enum']}"]
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(instance, t) for t in types):
            return [f"{path}: {instance!r} is not of type {' or '.join(types)}"]
    if "minimum" in schema and _type_ok(instance, "number") and instance < schema["minimum"]:
        errors.append(f"{path}: {instance} is below {schema['minimum']}")
    if isinstance(instance, dict):
        props: dict[str, Schema] = schema.get("properties", {})
        errors += [
            f"{path}: missing {k!r}" for k in schema.get("required", []) if k not in instance
        ]
        extra = schema.get("additionalProperties", True)
        for key, value in instance.items():
            if key in props:
                errors += validate(value, props[key], f"{path}.{key}")
            elif extra is False:
                errors.append(f"{path}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                errors += validate(value, extra, f"{path}.{key}")
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            errors += validate(item, schema["items"], f"{path}[{i}]")
    return errors
