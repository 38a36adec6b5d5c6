"""The control endpoint's sysfs, action and per-file ops (issue 8): ``sysfs``,
``store_attr``, ``reset``, ``trigger``, ``files`` and holders in ``bufinfo``,
each with its refusals and their errno."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from accelcore.admin import TriggerLimit
from accelcore.errors import InvalidArgument, PermissionDenied
from accelcore.machine import Machine
from accelcore.server import Server, control_request, recv_fds
from accelcore.server import protocol as p
from accelcore.server.client import ClientProcess, connect
from accelcore.server.control_ops import CONTROL_OPS, admin_of
from accelcore.server.wire import close_all, recv_record, send_record
from accelcore.sysfs import Attribute
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.uapi import CORE

from .conftest import Child, wait_for

Children = Callable[..., Child]
ACCEL0 = "/devices/virtual/accel/accel0"
NOBODY = 65534


def _errno_of(rt: object, op: str, **args: Any) -> int:
    with pytest.raises(OSError) as exc:
        control_request(op, str(rt), **args)
    assert exc.value.errno is not None
    return exc.value.errno


@pytest.fixture
def knobs(server: Server, machine: Machine) -> Iterator[dict[str, str]]:
    """Extra attributes on accel0: root-writable ``knob`` (EINVAL for non-digits),
    world-writable ``open_knob``, ``broken`` (show fails with EIO) and ``buggy``
    (show raises a plain exception: an oops)."""
    state = {"knob": "1", "open_knob": "a"}

    def store_knob(value: str) -> None:
        if not value.isdigit():
            raise InvalidArgument(f"knob {value!r} is not a number")
        state["knob"] = value

    def broken() -> str:
        raise InvalidArgument("the firmware does not answer")

    def buggy() -> str:
        raise RuntimeError("driver bug")

    def store_open(value: str) -> None:
        state["open_knob"] = value

    node = machine.subsystem.device("accel0").sysfs
    assert node is not None
    with machine.clock.lock:
        node.add_attribute(Attribute.rw("knob", lambda: state["knob"], store_knob))
        node.add_attribute(Attribute("open_knob", lambda: state["open_knob"], store_open, 0o666))
        node.add_attribute(Attribute.ro("broken", broken))
        node.add_attribute(Attribute.ro("buggy", buggy))
    yield state


def as_nobody(fn: Callable[[], None]) -> int:
    """Run ``fn`` in a forked child dropped to uid/gid 65534; its errno (0: none)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 250
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            fn()
            code = 0
        except OSError as exc:
            code = exc.errno if exc.errno and exc.errno < 250 else 251
        except BaseException:
            code = 252
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


needs_root = pytest.mark.skipif(os.getuid() != 0, reason="dropping to uid 65534 needs root")


# -- sysfs ----------------------------------------------------------------------------
def test_sysfs_walks_the_device_and_its_parents(server: Server) -> None:
    result = control_request("sysfs", server.runtime_dir, device="accel0")
    assert result["device"] == "accel0"
    (level,) = result["levels"]  # a virtual device has no parent
    assert (level["devpath"], level["kernel"], level["subsystem"], level["driver"]) == (
        ACCEL0,
        "accel0",
        "accel",
        None,
    )
    attrs = {a["name"]: a for a in level["attributes"]}
    assert attrs["dev"]["value"].startswith("261:")
    assert (attrs["jobs_submitted"]["mode"], attrs["jobs_submitted"]["writable"]) == ("0444", False)


def test_sysfs_gives_no_value_for_a_write_only_attribute(server: Server) -> None:
    (level,) = control_request("sysfs", server.runtime_dir, device="accel0")["levels"]
    reset = next(a for a in level["attributes"] if a["name"] == "reset")
    assert reset == {
        "name": "reset",
        "mode": "0200",
        "readable": False,
        "writable": True,
        "value": None,
        "error": None,
    }


def test_sysfs_reports_a_failing_show_as_its_error_text(server: Server, knobs: object) -> None:
    (level,) = control_request("sysfs", server.runtime_dir, device="accel0")["levels"]
    broken = next(a for a in level["attributes"] if a["name"] == "broken")
    assert (broken["value"], broken["error"]) == (None, "the firmware does not answer")


def test_sysfs_reports_an_oopsing_show_and_keeps_serving(server: Server, knobs: object) -> None:
    (level,) = control_request("sysfs", server.runtime_dir, device="accel0")["levels"]
    buggy = next(a for a in level["attributes"] if a["name"] == "buggy")
    assert buggy["value"] is None and "RuntimeError: driver bug" in buggy["error"]
    assert control_request("status", server.runtime_dir)["sessions"] == 0


def test_sysfs_of_an_unknown_device_is_enoent(server: Server) -> None:
    assert _errno_of(server.runtime_dir, "sysfs", device="accel9") == errno.ENOENT


@pytest.mark.parametrize(
    "args",
    [{}, {"device": 0}, {"device": None}, {"device": ""}, {"device": "accel0", "extra": 1}],
    ids=["missing", "int", "null", "empty", "unknown-field"],
)
def test_sysfs_with_a_malformed_request_is_einval(server: Server, args: dict[str, Any]) -> None:
    assert _errno_of(server.runtime_dir, "sysfs", **args) == errno.EINVAL


# -- store_attr ----------------------------------------------------------------------------
def test_store_attr_writes_through_the_drivers_store(server: Server, knobs: dict[str, str]) -> None:
    result = control_request(
        "store_attr", server.runtime_dir, device="accel0", name="knob", value="42\n"
    )
    assert result == {"device": "accel0", "devpath": ACCEL0, "name": "knob", "value": "42\n"}
    assert knobs["knob"] == "42"


def test_store_attr_at_a_level_or_devpath(server: Server, knobs: dict[str, str]) -> None:
    rt = server.runtime_dir
    control_request("store_attr", rt, device="accel0", name="knob", value="7", level=0)
    assert knobs["knob"] == "7"
    control_request(
        "store_attr", rt, device="accel0", name="knob", value="8", devpath="/sys" + ACCEL0
    )
    assert knobs["knob"] == "8"


def test_store_attr_of_a_read_only_attribute_is_eacces(server: Server) -> None:
    err = _errno_of(server.runtime_dir, "store_attr", device="accel0", name="dev", value="1:1")
    assert err == errno.EACCES


def test_store_attr_refused_by_the_driver_is_einval(server: Server, knobs: dict[str, str]) -> None:
    err = _errno_of(server.runtime_dir, "store_attr", device="accel0", name="knob", value="x")
    assert err == errno.EINVAL
    assert knobs["knob"] == "1"


def test_store_attr_of_an_unknown_attribute_is_enoent(server: Server) -> None:
    with pytest.raises(FileNotFoundError, match="no attribute 'nope' on accel0 or its parents"):
        control_request("store_attr", server.runtime_dir, device="accel0", name="nope", value="1")


def test_store_attr_at_a_devpath_outside_the_walk_is_enoent(server: Server) -> None:
    err = _errno_of(
        server.runtime_dir,
        "store_attr",
        device="accel0",
        name="reset",
        value="1",
        devpath="/devices/virtual/accel/accel1",
    )
    assert err == errno.ENOENT


@pytest.mark.parametrize(
    "args",
    [
        {"name": "knob"},
        {"name": "knob", "value": 1},
        {"name": "", "value": "1"},
        {"name": "knob", "value": "1", "level": 1},
        {"name": "knob", "value": "1", "level": True},
        {"name": "knob", "value": "1", "level": 0, "devpath": ACCEL0},
        {"name": "knob", "value": "x" * 5000},
    ],
    ids=["no-value", "int-value", "empty-name", "level-range", "bool-level", "both", "too-long"],
)
def test_store_attr_with_a_malformed_request_is_einval(
    server: Server, knobs: dict[str, str], args: dict[str, Any]
) -> None:
    assert _errno_of(server.runtime_dir, "store_attr", device="accel0", **args) == errno.EINVAL
    assert knobs["knob"] == "1"


@needs_root
def test_store_attr_of_a_root_writable_attribute_by_nobody_is_eacces(
    server: Server, knobs: dict[str, str]
) -> None:
    rt = server.runtime_dir
    code = as_nobody(
        lambda: control_request("store_attr", rt, device="accel0", name="knob", value="5")
    )
    assert code == errno.EACCES
    assert knobs["knob"] == "1"


@needs_root
def test_store_attr_of_a_world_writable_attribute_by_nobody_works(
    server: Server, knobs: dict[str, str]
) -> None:
    rt = server.runtime_dir
    code = as_nobody(
        lambda: control_request("store_attr", rt, device="accel0", name="open_knob", value="b")
    )
    assert code == 0
    assert knobs["open_knob"] == "b"


# -- reset ------------------------------------------------------------------------------
def test_reset_resets_the_device(server: Server, machine: Machine) -> None:
    result = control_request("reset", server.runtime_dir, device="accel1", reason="test")
    assert result == {
        "device": "accel1",
        "reason": "test",
        "status": "operational",
        "reset_count": 1,
    }
    assert machine.subsystem.device("accel1").reset_count == 1


def test_reset_of_an_unknown_device_is_enoent(server: Server) -> None:
    assert _errno_of(server.runtime_dir, "reset", device="accel7") == errno.ENOENT


@pytest.mark.parametrize("reason", [5, "a\nb", "r" * 300], ids=["int", "newline", "too-long"])
def test_reset_with_a_bad_reason_is_einval(server: Server, machine: Machine, reason: Any) -> None:
    assert _errno_of(server.runtime_dir, "reset", device="accel0", reason=reason) == errno.EINVAL
    assert machine.subsystem.device("accel0").reset_count == 0


@needs_root
def test_reset_by_nobody_is_eacces(server: Server, machine: Machine) -> None:
    rt = server.runtime_dir
    code = as_nobody(lambda: control_request("reset", rt, device="accel0"))
    assert code == errno.EACCES
    assert machine.subsystem.device("accel0").reset_count == 0


def test_reset_refusal_is_permission_denied_in_python(server: Server, machine: Machine) -> None:
    # The same refusal, in-process: the op sees the peer uid the session gives it.
    with pytest.raises(PermissionDenied):
        CONTROL_OPS["reset"](server, {"op": "reset", "device": "accel0"}, NOBODY)


# -- trigger ----------------------------------------------------------------------------
def _subscribed(rt: object) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(f"{rt}/control")
    sock.settimeout(10)
    send_record(sock, p.encode(p.Control({"op": "subscribe"}), 1))
    data, fds = recv_record(sock)
    close_all(fds)
    reply = p.decode(data).message
    assert isinstance(reply, p.ControlReply) and reply.reply["ok"]
    return sock


def _next_uevent(sock: socket.socket) -> dict[str, Any]:
    data, fds = recv_record(sock)
    close_all(fds)
    msg = p.decode(data).message
    assert isinstance(msg, p.Uevent)
    return msg.event


def test_trigger_all_emits_a_change_per_device_seen_by_a_subscriber(server: Server) -> None:
    with _subscribed(server.runtime_dir) as sock:
        result = control_request("trigger", server.runtime_dir, all=True)
        events = [_next_uevent(sock) for _ in result["events"]]
    assert [e["device"] for e in result["events"]] == ["accel0", "accel1"]
    assert [(e["action"], e["devpath"]) for e in events] == [
        ("change", ACCEL0),
        ("change", "/devices/virtual/accel/accel1"),
    ]
    assert [e["seqnum"] for e in events] == [e["seqnum"] for e in result["events"]]


def test_trigger_one_device(server: Server) -> None:
    result = control_request("trigger", server.runtime_dir, device="accel1")
    assert [e["device"] for e in result["events"]] == ["accel1"]


@pytest.mark.parametrize(
    "args",
    [{}, {"all": True, "device": "accel0"}, {"all": 1}, {"all": False}],
    ids=["neither", "both", "int-all", "all-false"],
)
def test_trigger_with_a_malformed_request_is_einval(server: Server, args: dict[str, Any]) -> None:
    assert _errno_of(server.runtime_dir, "trigger", **args) == errno.EINVAL


def test_trigger_of_an_unknown_device_is_enoent(server: Server) -> None:
    assert _errno_of(server.runtime_dir, "trigger", device="accel3") == errno.ENOENT


# -- files and holders -------------------------------------------------------------------
def test_files_lists_each_open_file_with_fdinfo_and_holders(
    server: Server, client: ClientProcess
) -> None:
    fd = client.open("/dev/accel/accel0")
    fd2 = client.dup(fd)
    (row,) = control_request("files", server.runtime_dir)
    assert (row["device"], row["pid"], row["uid"], row["owner"], row["control"]) == (
        "accel0",
        os.getpid(),
        os.getuid(),
        False,
        False,
    )
    assert row["fdinfo"]["drm-client-id"] == str(row["client_id"])
    assert row["holders"] == [{"pid": os.getpid(), "fd": fd}, {"pid": os.getpid(), "fd": fd2}]


def test_files_holders_drop_a_closed_descriptor(server: Server, client: ClientProcess) -> None:
    fd = client.open("/dev/accel/accel1")
    fd2 = client.dup(fd)
    client.close(fd)
    (row,) = control_request("files", server.runtime_dir)
    assert row["holders"] == [{"pid": os.getpid(), "fd": fd2}]


PASSER_SCRIPT = """
sock = socket.socket(fileno=SOCKFD)
proc = connect(RT)
fd = proc.open("/dev/accel/accel0")
send_fds(sock, [fd])
say("SENT")
"""


def test_files_holders_follow_a_descriptor_passed_to_another_process(
    server: Server, client: ClientProcess, children: Children
) -> None:
    client.open("/dev/accel/accel1")  # a session for this process
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with mine:
        child = children(
            PASSER_SCRIPT.replace("SOCKFD", str(theirs.fileno())),
            server.runtime_dir,
            pass_fds=(theirs.fileno(),),
        )
        theirs.close()
        child.expect("SENT")
        _, (fd,) = recv_fds(mine)
    assert child.finish() == 0
    rt = server.runtime_dir

    def passed() -> list[Any]:
        rows = control_request("files", rt)
        return [r for r in rows if r["device"] == "accel0"]

    assert wait_for(lambda: len(passed()) == 1 and len(passed()[0]["holders"]) == 1)
    (row,) = passed()
    assert row["pid"] == child.pid  # the opener, gone now
    assert row["holders"] == [{"pid": os.getpid(), "fd": fd}]
    client.close(fd)


def test_files_with_an_unknown_field_is_einval(server: Server) -> None:
    assert _errno_of(server.runtime_dir, "files", all=True) == errno.EINVAL


def test_bufinfo_lists_the_holders_of_a_dma_buf(
    server: Server, client: ClientProcess, machine: Machine
) -> None:
    base = machine.subsystem.accounting()
    fd = client.open("/dev/accel/accel0")
    bo = V.new("struct vaccel_create_bo", size=4096)
    client.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    ph = CORE.new("struct drm_prime_handle", handle=bo.handle, flags=CORE.DRM_CLOEXEC)
    client.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph)
    (entry,) = control_request("bufinfo", server.runtime_dir)
    assert entry["exporter"] == "accel0"
    assert entry["holders"] == [{"pid": os.getpid(), "fd": ph.fd}]
    client.close(ph.fd)
    client.close(fd)
    assert wait_for(lambda: machine.subsystem.accounting() == base)


# -- the reply ----------------------------------------------------------------------------
def test_an_op_that_crashes_is_eio_and_the_session_goes_on(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*_: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setitem(CONTROL_OPS, "files", crash)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.connect(str(server.control_path))
        sock.settimeout(10)
        replies = []
        for rid, op in ((1, "files"), (2, "accounting")):
            send_record(sock, p.encode(p.Control({"op": op}), rid))
            data, fds = recv_record(sock)
            close_all(fds)
            msg = p.decode(data).message
            assert isinstance(msg, p.ControlReply)
            replies.append(msg.reply)
    assert (replies[0]["ok"], replies[0]["errno"]) == (False, errno.EIO)
    assert replies[1]["ok"] is True


def test_an_unknown_op_is_einval(server: Server) -> None:
    assert _errno_of(server.runtime_dir, "frobnicate") == errno.EINVAL


# -- information another user may see (issue 16 §4) ----------------------------------------
@needs_root
def test_files_shows_nobody_only_its_own_clients(server: Server, client: ClientProcess) -> None:
    root_fd = client.open("/dev/accel/accel0")
    rt = server.runtime_dir

    def peek() -> None:
        proc = connect(rt)
        try:
            proc.open("/dev/accel/accel1")
            rows = control_request("files", rt)
            # Only its own file: not root's open of accel0 (fdinfo of another uid).
            if [(r["device"], r["uid"]) for r in rows] != [("accel1", NOBODY)]:
                raise PermissionDenied(f"nobody saw {rows}")
        finally:
            proc.exit()

    assert as_nobody(peek) == 0
    # root still sees every client (its own one here; nobody's has gone with it)
    assert [r["uid"] for r in control_request("files", rt)] == [0]
    client.close(root_fd)


@needs_root
def test_bufinfo_by_nobody_is_eacces(server: Server) -> None:
    rt = server.runtime_dir
    assert as_nobody(lambda: control_request("bufinfo", rt)) == errno.EACCES


@needs_root
def test_trigger_by_nobody_is_limited_to_its_budget(server: Server) -> None:
    # A budget of 3 events that never refills: the limit, not the timing, decides.
    admin_of(server).trigger_limit = TriggerLimit(burst=3, interval_ns=10**18)
    rt = server.runtime_dir

    def flood() -> None:
        control_request("trigger", rt, device="accel0")
        control_request("trigger", rt, all=True)  # 2 devices: 3 events in all
        control_request("trigger", rt, device="accel0")  # the 4th: EAGAIN

    assert as_nobody(flood) == errno.EAGAIN
    # root is not limited
    for _ in range(5):
        assert len(control_request("trigger", rt, all=True)["events"]) == 2
