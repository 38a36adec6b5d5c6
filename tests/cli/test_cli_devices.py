"""accelctl list, info, attrs and topology through CliRunner, JSON checked against schemas."""

from __future__ import annotations

import pytest
from cli_helpers import Invoke, check_json

from accelcore.cli.sources import EmbeddedSource
from accelcore.userspace import Process


def test_list_json_lists_both_sim_devices(invoke: Invoke) -> None:
    res = invoke("list", "--json")
    assert res.exit_code == 0, res.stderr
    data = check_json("list", res.stdout)
    assert [
        (d["name"], d["minor"], d["driver"], d["status"], d["source"]) for d in data["devices"]
    ] == [
        ("accel0", 0, "vaccel", "operational", "sim"),
        ("accel1", 1, "vaccel", "operational", "sim"),
    ]


def test_list_virtual_devices_have_no_pci_address(invoke: Invoke) -> None:
    data = check_json("list", invoke("list", "--json").stdout)
    assert {d["pci_address"] for d in data["devices"]} == {None}


def test_list_selector_narrows_the_list(invoke: Invoke) -> None:
    data = check_json("list", invoke("list", "accel1", "--json").stdout)
    assert [d["name"] for d in data["devices"]] == ["accel1"]


def test_list_defaults_to_accel_device_env(invoke: Invoke) -> None:
    res = invoke("list", "--json", env={"ACCEL_DEVICE": "/dev/accel/accel1"})
    assert [d["name"] for d in check_json("list", res.stdout)["devices"]] == ["accel1"]


def test_list_pci_machine_reports_addresses_and_ids(
    invoke: Invoke, pci_sim: EmbeddedSource
) -> None:
    data = check_json("list", invoke("list", "--json", source=pci_sim).stdout)
    assert [(d["pci_address"], d["vendor"], d["device"]) for d in data["devices"]] == [
        ("0000:00:10.0", 0x1234, 0x11E8),
        ("0000:00:11.0", 0x1234, 0x11E8),
    ]


def test_list_table_names_devices(invoke: Invoke) -> None:
    res = invoke("list")
    assert res.exit_code == 0
    assert "accel0" in res.stdout and "vaccel" in res.stdout


def test_list_host_json_is_valid_and_sourced_from_host(invoke: Invoke) -> None:
    pytest.importorskip("pyudev")
    res = invoke("list", "--host", "--json")
    assert res.exit_code == 0, res.stderr
    assert all(d["source"] == "host" for d in check_json("list", res.stdout)["devices"])


def test_info_json_reports_identity_status_and_engines(invoke: Invoke) -> None:
    res = invoke("info", "accel0", "--json")
    assert res.exit_code == 0, res.stderr
    (info,) = check_json("info", res.stdout)["devices"]
    assert info["identity"]["driver"] == "vaccel"
    assert info["identity"]["bus_id"] == "virtual"
    assert info["status"] == {
        "status": "operational",
        "tainted": False,
        "reset_count": 0,
        "oops_count": 0,
        "open_count": 0,
    }
    assert [e["name"] for e in info["engines"]] == ["fill"]
    assert info["memory"][0]["name"] == "system"


def test_info_shows_owner_and_clients_but_not_itself(invoke: Invoke, sim: EmbeddedSource) -> None:
    proc = Process(sim.subsystem, uid=1000, comm="job")
    fd = proc.open("/dev/accel/accel0")
    from accelcore.demo.quick import create_bo

    create_bo(proc, fd, 4096)
    (info,) = check_json("info", invoke("info", "accel0", "--json").stdout)["devices"]
    assert info["ownership"]["state"] == "owned"
    assert info["ownership"]["owner_pid"] == proc.pid
    assert [(c["pid"], c["comm"], c["owner"], c["handles"]) for c in info["clients"]] == [
        (proc.pid, "job", True, 1)
    ]
    assert info["status"]["open_count"] == 1
    proc.exit()


def test_info_leaves_no_resources_behind(invoke: Invoke, sim: EmbeddedSource) -> None:
    before = sim.subsystem.accounting()
    invoke("info", "all", "--json")
    assert sim.subsystem.accounting() == before


def test_info_all_reports_every_device(invoke: Invoke) -> None:
    data = check_json("info", invoke("info", "all", "--json").stdout)
    assert [d["name"] for d in data["devices"]] == ["accel0", "accel1"]


def test_info_table_mentions_driver_and_status(invoke: Invoke) -> None:
    res = invoke("info", "accel0")
    assert res.exit_code == 0
    assert "vaccel 1.0.0" in res.stdout and "operational" in res.stdout


def test_info_unknown_device_is_exit_6_with_one_line(invoke: Invoke) -> None:
    res = invoke("info", "accel9")
    assert res.exit_code == 6
    assert res.stdout == ""
    assert res.stderr == "Error: no accel device 'accel9'\n"


def test_info_without_device_is_a_usage_error(invoke: Invoke) -> None:
    res = invoke("info")
    assert res.exit_code == 2
    assert "name a DEVICE (or -i DEVICE)" in res.stderr


def test_info_takes_device_from_env(invoke: Invoke) -> None:
    res = invoke("info", "--json", env={"ACCEL_DEVICE": "accel1"})
    assert [d["name"] for d in check_json("info", res.stdout)["devices"]] == ["accel1"]


def test_bad_option_is_exit_2(invoke: Invoke) -> None:
    res = invoke("list", "--bogus")
    assert res.exit_code == 2
    assert "No such option '--bogus'" in res.stderr


def test_malformed_selector_is_exit_2(invoke: Invoke) -> None:
    res = invoke("info", "pci:colour=red")
    assert res.exit_code == 2
    assert "Invalid value for DEVICE" in res.stderr


def test_attrs_walk_of_virtual_device_is_one_level(invoke: Invoke) -> None:
    res = invoke("attrs", "accel0", "--json")
    assert res.exit_code == 0, res.stderr
    data = check_json("attrs", res.stdout)
    (level,) = data["levels"]
    assert level["devpath"] == "/devices/virtual/accel/accel0"
    values = {a["name"]: a["value"] for a in level["attributes"]}
    assert values["dev"] == "261:0"
    assert values["reset"] is None  # write-only


def test_attrs_walk_reaches_pci_parent(invoke: Invoke, pci_sim: EmbeddedSource) -> None:
    data = check_json("attrs", invoke("attrs", "0000:00:11.0", "--json", source=pci_sim).stdout)
    assert [(lvl["kernel"], lvl["subsystem"]) for lvl in data["levels"]] == [
        ("accel1", "accel"),
        ("0000:00:11.0", "pci"),
        ("pci0000:00", None),
    ]
    pci = {a["name"]: a["value"] for a in data["levels"][1]["attributes"]}
    assert (pci["vendor"], pci["device"]) == ("0x1234", "0x11e8")
    assert data["levels"][1]["driver"] == "edu_accel"


def test_attrs_name_filters_to_one_attribute(invoke: Invoke) -> None:
    data = check_json("attrs", invoke("attrs", "accel0", "jobs_submitted", "--json").stdout)
    assert [[a["name"] for a in lvl["attributes"]] for lvl in data["levels"]] == [
        ["jobs_submitted"]
    ]


def test_attrs_unknown_name_is_exit_6(invoke: Invoke) -> None:
    res = invoke("attrs", "accel0", "nope")
    assert res.exit_code == 6
    assert res.stderr == "Error: no attribute 'nope' on accel0 or its parents\n"


def test_attrs_store_writes_writable_attribute(invoke: Invoke, sim: EmbeddedSource) -> None:
    res = invoke("attrs", "accel0", "reset", "1", "--json")
    assert res.exit_code == 0, res.stderr
    assert check_json("attrs-store", res.stdout)["devpath"] == "/devices/virtual/accel/accel0"
    assert sim.subsystem.device("accel0").reset_count == 1


def test_attrs_store_on_parent_attribute(invoke: Invoke, pci_sim: EmbeddedSource) -> None:
    res = invoke("attrs", "accel0", "driver_override", "edu_accel", "--json", source=pci_sim)
    assert check_json("attrs-store", res.stdout)["devpath"] == "/devices/pci0000:00/0000:00:10.0"


def test_attrs_store_read_only_is_exit_4_no_permission(invoke: Invoke) -> None:
    res = invoke("attrs", "accel0", "dev", "1:1")
    assert res.exit_code == 4
    assert res.stderr == "Error: attribute 'dev' on /devices/virtual/accel/accel0 is read-only\n"


def test_attrs_needs_one_device(invoke: Invoke) -> None:
    res = invoke("attrs", "all")
    assert res.exit_code == 2
    assert "attrs needs one device; 'all' selects accel0, accel1" in res.stderr


def test_topology_virtual_machine(invoke: Invoke) -> None:
    data = check_json("topology", invoke("topology", "--json").stdout)
    assert data == {"roots": [], "virtual": ["accel0", "accel1"]}


def test_topology_pci_tree_has_accel_nodes(invoke: Invoke, pci_sim: EmbeddedSource) -> None:
    data = check_json("topology", invoke("topology", "--json", source=pci_sim).stdout)
    (root,) = data["roots"]
    assert root["name"] == "pci0000:00"
    assert [(f["address"], f["driver"], f["accel"]) for f in root["functions"]] == [
        ("0000:00:10.0", "edu_accel", ["accel0"]),
        ("0000:00:11.0", "edu_accel", ["accel1"]),
    ]


def test_topology_tree_renders(invoke: Invoke, pci_sim: EmbeddedSource) -> None:
    res = invoke("topology", source=pci_sim)
    assert res.exit_code == 0
    assert "0000:00:10.0" in res.stdout and "accel1" in res.stdout
