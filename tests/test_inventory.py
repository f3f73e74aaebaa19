"""Inventory loading, variables and ansible-inventory output, checked against Ansible's own output.

The files under tests/cases/inventory/*/expected/ were produced by ansible-core 2.19
(`ansible-inventory --list`, `--graph [--vars]`); see tests/cases/inventory/regen.py.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from easytask.errors import InventoryError, NoHostsMatched, PatternError
from easytask.inventory import UnsafeText, dumps_json, dumps_yaml, load_inventory
from easytask.inventory.hostnames import RangeError, expand_host_pattern, parse_address
from easytask.inventory.ini import ini_value
from easytask.transport.invscript import script_runner

CASES = Path(__file__).parent / "cases" / "inventory"
ERRORS = CASES / "errors"
SAMPLE = Path(__file__).parent.parent / "inventory"
CASE_NAMES = sorted(p.name for p in CASES.iterdir() if (p / "case.json").is_file())
SCRIPTS = script_runner(30)
# A value shared through a YAML merge key (`<<: *webvars`) is one object for us and two for
# Ansible: the same data, written with one YAML anchor more by Ansible.
YAML_ANCHORS_DIFFER = {"yaml_features"}  # the cases' inventory scripts are run for real


def case_sources(name: str) -> list[str]:
    spec = json.loads((CASES / name / "case.json").read_text())
    return [s if "," in s else str(CASES / name / s) for s in spec["sources"]]


def case_graphs() -> list[tuple[str, str]]:
    out = []
    for name in CASE_NAMES:
        spec = json.loads((CASES / name / "case.json").read_text())
        out += [(name, group) for group in spec.get("graph", [])]
    return out


def write(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


# -- golden output from Ansible ---------------------------------------------------------------


@pytest.mark.parametrize("name", CASE_NAMES)
def test_list_json_matches_ansible(name: str) -> None:
    """The --list JSON is byte for byte what ansible-inventory --list prints."""
    inventory = load_inventory(case_sources(name), SCRIPTS)
    expected = (CASES / name / "expected" / "list.json").read_text()
    assert dumps_json(inventory.to_list_json()) + "\n" == expected


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("export", [False, True])
def test_list_yaml_and_export_match_ansible(name: str, export: bool) -> None:
    """--list --yaml, --list --export and --list --export --yaml are what ansible-inventory prints."""
    inventory = load_inventory(case_sources(name), SCRIPTS)
    stem = "list-export" if export else "list"
    expected_json = (CASES / name / "expected" / f"{stem}.json").read_text()
    expected_yaml = (CASES / name / "expected" / f"{stem}.yaml").read_text()
    assert dumps_json(inventory.to_list_json(export=export)) + "\n" == expected_json
    assert dumps_yaml(inventory.to_yaml_tree(export=export)) == expected_yaml


@pytest.mark.parametrize("name", CASE_NAMES)
def test_host_vars_match_ansible(name: str) -> None:
    """Each host's merged vars equal what ansible-inventory shows for it (empty ones are left out)."""
    inventory = load_inventory(case_sources(name), SCRIPTS)
    expected = json.loads((CASES / name / "expected" / "list.json").read_text())
    hostvars = expected["_meta"]["hostvars"]
    for host in inventory.hosts:
        assert json.loads(dumps_json(inventory.host_vars(host))) == hostvars.get(host, {}), host


@pytest.mark.parametrize(("name", "group"), case_graphs())
@pytest.mark.parametrize("with_vars", [False, True])
def test_graph_matches_ansible(name: str, group: str, with_vars: bool) -> None:
    """The graph, with or without vars, is what ansible-inventory --graph prints."""
    inventory = load_inventory(case_sources(name), SCRIPTS)
    suffix = "-vars" if with_vars else ""
    expected = (CASES / name / "expected" / f"graph-{group}{suffix}.txt").read_text()
    assert inventory.graph(group, with_vars=with_vars) + "\n" == expected


# -- the sample inventory ---------------------------------------------------------------------


@pytest.mark.parametrize("source", ["hosts.ini", "hosts.yml", "."])
def test_sample_inventory_is_the_same_in_every_form(source: str) -> None:
    """inventory/ loads the same from hosts.ini, hosts.yml or the whole directory."""
    inventory = load_inventory(SAMPLE / source)
    assert list(inventory.hosts) == ["web1", "web2", "db1"]
    assert inventory.to_list_json() == load_inventory(SAMPLE).to_list_json()
    assert inventory.select("prod:!db") == ["web1", "web2"]
    assert inventory.warnings == []


# -- variables --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "var", "value"),
    [
        ("web1.example.com", "http_port", 9090),  # group_vars/all beats [web:vars] and [all:vars]
        ("web1.example.com", "tier", "web-file"),  # group_vars/web (no extension) beats web.yml
        ("web1.example.com", "env", "staging-file"),  # staging.yml read, staging.yaml ignored
        ("web1.example.com", "weight", 11),  # host_vars/ beats the host line
        ("web1.example.com", "ansible_port", 2222),  # a later :port does not replace the first
        ("db1", "tier", "prod"),  # [prod:vars], no group file for dbs sets tier
        ("db1", "ansible_user", "pg"),  # host_vars/db1/main.yml
        ("db1", "x", 2),  # group_vars/dbs/b.yaml after a.yml
        ("db1", "nested", {"c": 3}),  # files replace whole values; no deep merge
        ("db2", "esc", "a\\d"),  # an invalid escape is kept, as Python reads it
        ("lonely2", "region", "eu"),  # [all:vars]
    ],
)
def test_variable_precedence(host: str, var: str, value: Any) -> None:
    """Variables come from the right layer of Ansible's precedence."""
    inventory = load_inventory(case_sources("ini_features"))
    assert inventory.host_vars(host)[var] == value


def test_group_priority_and_depth_order_groups(tmp_path: Path) -> None:
    """Deeper groups win; at the same depth a higher ansible_group_priority wins, then the name."""
    write(
        tmp_path,
        {
            "hosts.ini": "[a]\nh1\n[b]\nh1\n[c]\nh1\n[parent:children]\nc\n"
            "[a:vars]\nx=a\ny=a\nz=a\n[b:vars]\nx=b\ny=b\n[c:vars]\nx=c\n"
            "[parent:vars]\nx=p\ny=p\nz=p\n[a:vars]\nansible_group_priority=5\n"
        },
    )
    values = load_inventory(tmp_path / "hosts.ini").host_vars("h1")
    assert (values["x"], values["y"], values["z"]) == ("c", "a", "a")


def test_yaml_values_keep_their_types() -> None:
    """YAML values are typed as YAML 1.1 says; !unsafe text is marked."""
    values = load_inventory(case_sources("yaml_features")).host_vars("web1")
    assert values["started"] == datetime.date(2024, 1, 2)
    assert values["octal"] == 493
    assert values["float_like"] == "1.0e3"
    assert values["yes_value"] is True
    assert isinstance(values["template"], UnsafeText)
    assert values["template"] == "{{ not_rendered }}"


@pytest.mark.parametrize(
    ("host", "var", "origin"),
    [
        ("web1.example.com", "http_port", "group_vars/all"),
        ("web1.example.com", "tier", "group_vars/web"),
        ("web1.example.com", "weight", "host_vars/web1.example.com"),
        ("db1", "tier", "group prod"),
        ("db1", "ansible_user", "host_vars/db1"),
        ("db1", "x", "group_vars/dbs"),
        ("lonely2", "region", "group all"),
    ],
)
def test_host_var_origins_name_the_layer_that_won(host: str, var: str, origin: str) -> None:
    """Each variable's origin is the layer whose value `host_vars` keeps, for every variable."""
    inventory = load_inventory(case_sources("ini_features"))
    origins = inventory.host_var_origins(host)
    assert set(origins) == set(inventory.host_vars(host))
    assert origins[var] == origin or origins[var].endswith("/" + origin), origins[var]


def test_host_vars_are_copies() -> None:
    """Changing returned vars does not change the inventory."""
    inventory = load_inventory(case_sources("ini_features"))
    inventory.host_vars("db1")["nested"]["c"] = 99
    assert inventory.host_vars("db1")["nested"] == {"c": 3}


def test_magic_vars() -> None:
    """inventory_hostname, group_names and groups are derived as Ansible derives them."""
    inventory = load_inventory(case_sources("ini_features"))
    magic = inventory.magic_vars("web2.example.com")
    assert magic["inventory_hostname"] == "web2.example.com"
    assert magic["inventory_hostname_short"] == "web2"
    assert magic["group_names"] == ["prod", "staging", "web"]
    assert magic["groups"]["dbs"] == ["db1", "db2"]
    assert magic["inventory_file"].endswith("ini_features/hosts.ini")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", 1),
        ("-7", -7),
        ("1_000", 1000),
        ("0x1f", 31),
        ("1e3", 1000.0),
        ("0.5", 0.5),
        ("True", True),
        ("False", False),
        ("None", None),
        ("yes", "yes"),
        ("0755", "0755"),
        ("[1, 'a']", [1, "a"]),
        ("(1, 2)", [1, 2]),
        ("{'k': (1,)}", {"k": [1]}),
        ("{3}", [3]),
        ("'quoted'", "quoted"),
        ("b'x'", "x"),
        ("1j", "1j"),
        ("...", "..."),
        ("hello world", "hello world"),
        ("", ""),
        ("'a\\d'", "a\\d"),
    ],
)
def test_ini_values_are_typed_like_ansible(text: str, value: Any) -> None:
    """INI values are Python literals when they parse as one, else the text itself."""
    assert ini_value(text) == value
    assert type(ini_value(text)) is type(value)


# -- host names and ranges --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "names", "port"),
    [
        ("web1", ["web1"], None),
        ("web1:2222", ["web1"], 2222),
        ("web[1:3]", ["web1", "web2", "web3"], None),
        (
            "web[01:10:4].example.com",
            ["web01.example.com", "web05.example.com", "web09.example.com"],
            None,
        ),
        ("db-[a:c]", ["db-a", "db-b", "db-c"], None),
        ("x[a:e:2]", ["xa", "xc", "xe"], None),
        ("s-[y:B]", ["s-y", "s-z", "s-A", "s-B"], None),
        ("n[:1]", ["n0", "n1"], None),
        ("r[1:2]-[a:b]", ["r1-a", "r1-b", "r2-a", "r2-b"], None),
        ("p[1:2]:8022", ["p1", "p2"], 8022),
        ("10.0.0.[1:2]", ["10.0.0.1", "10.0.0.2"], None),
        ("[2001:db8::1]:22", ["2001:db8::1"], 22),
        ("2001:db8::1", ["2001:db8::1"], None),
        ("e[3:1]", [], None),
    ],
)
def test_host_patterns_expand(pattern: str, names: list[str], port: int | None) -> None:
    """Host entries expand numeric, zero-padded, lettered and stepped ranges, and split the port."""
    assert expand_host_pattern(pattern) == (names, port)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("web[1:3", "unterminated range in host pattern 'web[1:3'"),
        (
            "web[1]",
            "bad range [1] in host pattern 'web[1]': expected [begin:end] or [begin:end:step]",
        ),
        ("web[c:a]", "bad range [c:a] in host pattern 'web[c:a]': begin is after end"),
        ("web[1:5:x]", "bad range [1:5:x] in host pattern 'web[1:5:x]': step 'x' is not a number"),
        ("a]b[1:2]", "bad range in host pattern 'a]b[1:2]': ']' before '['"),
    ],
)
def test_bad_ranges_are_refused(pattern: str, message: str) -> None:
    """A range that cannot be expanded says what is wrong with it."""
    with pytest.raises(RangeError) as exc:
        expand_host_pattern(pattern)
    assert str(exc.value) == message


@pytest.mark.parametrize(
    ("address", "result"),
    [
        ("web1.example.com", ("web1.example.com", None)),
        ("web1:22", ("web1", 22)),
        ("192.0.2.1:2222", ("192.0.2.1", 2222)),
        ("::1", ("::1", None)),
        ("[::1]:2222", ("::1", 2222)),
    ],
)
def test_addresses_parse(address: str, result: tuple[str, int | None]) -> None:
    """Names, IPv4 and IPv6 addresses split into host and port."""
    assert parse_address(address) == result


# -- loading rules ----------------------------------------------------------------------------


def test_directory_skips_what_ansible_skips() -> None:
    """Hidden files, backups, docs, .cfg/.retry/.orig files and vars dirs are not parsed."""
    inventory = load_inventory(CASES / "directory" / "inv")
    assert set(inventory.groups) == {
        "all", "ungrouped", "web", "db", "cache", "monitoring", "queue", "edge", "nested",
    }  # fmt: skip


def test_empty_source_list_gives_an_empty_inventory() -> None:
    """No source at all is an empty inventory with just `all` and `ungrouped`."""
    inventory = load_inventory([])
    assert inventory.hosts == {}
    assert list(inventory.groups) == ["all", "ungrouped"]


@pytest.mark.parametrize("text", ["", "# just a comment\n", "---\n", "{}\n"])
def test_empty_yaml_file_is_an_empty_inventory(tmp_path: Path, text: str) -> None:
    """An empty YAML file adds nothing (Ansible then reads it as an empty INI file)."""
    write(tmp_path, {"hosts.yml": text})
    assert load_inventory(tmp_path / "hosts.yml").hosts == {}


def test_ini_in_a_yml_file_is_read_as_ini(tmp_path: Path) -> None:
    """A .yml file that is not YAML is tried as INI, as Ansible's plugins take turns."""
    write(tmp_path, {"hosts.yml": "[web]\nweb1 port=80\n"})
    assert load_inventory(tmp_path / "hosts.yml").select("web") == ["web1"]


def test_host_list_source() -> None:
    """A comma-separated source is a list of ungrouped hosts with optional ports."""
    inventory = load_inventory("a1, a2:2022,")
    assert inventory.select("ungrouped") == ["a1", "a2"]
    assert inventory.host_vars("a2") == {"ansible_port": 2022}


def test_missing_source_is_an_error(tmp_path: Path) -> None:
    """A source that does not exist is named in the error."""
    with pytest.raises(InventoryError) as exc:
        load_inventory(tmp_path / "nope")
    assert str(exc.value) == f"inventory source not found: {tmp_path / 'nope'}"


def test_warnings_name_the_place() -> None:
    """Keys Ansible skips with a warning are reported with file:line:col."""
    inventory = load_inventory(case_sources("yaml_features"))
    path = case_sources("yaml_features")[0]
    assert inventory.warnings == [
        f"{path}:44:7: skipping key 'notes' in group 'odd': not a mapping",
        f"{path}:45:7: skipping unknown key 'extra' in group 'odd' (expected vars, children or hosts)",
    ]


def test_host_named_like_a_group_is_warned_about() -> None:
    """A name used for both a host and a group gives Ansible's warning."""
    inventory = load_inventory(case_sources("patterns"))
    assert inventory.warnings == ["found both a group and a host named 'web1'"]


# -- extra hosts ------------------------------------------------------------------------------


def test_with_extra_hosts_adds_hosts_and_groups() -> None:
    """Extra hosts join existing or new groups; a host without groups is ungrouped."""
    base = load_inventory(SAMPLE)
    merged = base.with_extra_hosts({"web3": ["web", "canary"], "loose": [], "db1": ["canary"]})
    assert merged.select("web") == ["web1", "web2", "web3"]
    assert merged.select("canary") == ["web3", "db1"]  # in the order they joined
    assert merged.select("ungrouped") == ["loose"]
    assert merged.host_vars("web3")["tier"] == "web"  # group_vars/web.yml applies
    assert merged.host_vars("loose")["easytask_connection"] == "agent"  # group_vars/all.yml
    assert "canary" in merged.to_list_json()["all"]["children"]
    assert "web3" not in base.hosts  # the original is unchanged
    assert base.select("web") == ["web1", "web2"]


def test_with_extra_hosts_takes_an_ungrouped_host_out_of_ungrouped() -> None:
    """An ungrouped host that gets a group label leaves `ungrouped`, as in Ansible."""
    inventory = load_inventory("a1,a2,").with_extra_hosts({"a1": ["web"]})
    assert inventory.select("ungrouped") == ["a2"]
    assert inventory.select("web") == ["a1"]


def test_with_extra_hosts_lists_each_member_once() -> None:
    """A host labelled with a group it is in already (or twice) is listed in it once, and the
    group's hosts and each host's groups agree, in a fleet of thousands as in a handful."""
    base = load_inventory(SAMPLE)
    fleet = {f"n{i:05d}": ["fleet", "fleet"] for i in range(20_000)}
    merged = base.with_extra_hosts({**fleet, "web1": ["web", "fleet"], "web2": ["web"]})
    assert merged.select("web") == ["web1", "web2"]
    assert merged.select("fleet") == [*fleet, "web1"]
    assert merged.hosts["web1"].groups.count("fleet") == 1
    assert all(merged.hosts[h].groups == ["fleet"] for h in fleet)
    assert len(merged.groups["fleet"].hosts) == len(fleet) + 1


def test_with_extra_hosts_refuses_a_string_of_groups() -> None:
    """Group labels must be a list; a bare string is a mistake, not letters."""
    with pytest.raises(InventoryError):
        load_inventory([]).with_extra_hosts({"a": "web"})


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "line", "col", "message"),
    [
        ("unterminated_range.ini", 2, None, "unterminated range in host pattern 'web[1:3'"),
        ("range_one_bound.ini", 2, None, "bad range [1] in host pattern 'web[1]': expected [begin:end] or [begin:end:step]"),
        ("range_widths.ini", 2, None, "bad range [01:100] in host pattern 'web[01:100]': a zero-padded begin and its end must have the same width"),
        ("range_backwards.ini", 2, None, "bad range [c:a] in host pattern 'web-[c:a]': begin is after end"),
        ("range_mixed.ini", 2, None, "bad range [a:9] in host pattern 'web-[a:9]': begin and end must both be numbers or both be letters"),
        ("range_step_zero.ini", 2, None, "bad range [1:5:0] in host pattern 'web[1:5:0]': step cannot be zero"),
        ("range_no_end.ini", 2, None, "bad range [1:] in host pattern 'web[1:]': missing end"),
        ("unknown_section.ini", 4, None, "unknown section type 'foo' in [web:foo] (expected [group], [group:vars] or [group:children])"),
        ("section_spaces.ini", 1, None, "invalid section header '[web servers]': a group name cannot contain spaces, ':' or ']'"),
        ("host_var_no_equals.ini", 2, None, "expected key=value after the host name, got 'ansible_port'"),
        ("host_line_quote.ini", 2, None, "cannot parse host line: No closing quotation"),
        ("host_trailing_colon.ini", 2, None, "invalid host 'web1:': a trailing ':' must be followed by a port"),
        ("vars_no_equals.ini", 4, None, "expected key=value, got 'just_a_word'"),
        ("children_bad_name.ini", 2, None, "expected a group name, got 'web servers'"),
        ("children_undefined.ini", 3, None, "section [prod:children] includes undefined group 'dbs'"),
        ("vars_undefined.ini", 4, None, "section [db:vars] is for undefined group 'db' (declare it with [db] or [db:children])"),
        ("cycle.ini", 8, None, "group 'a' would be its own ancestor: a -> b -> c -> a"),
        ("self_child.ini", 2, None, "group 'a' would be its own ancestor: a -> a"),
        ("bad_priority.ini", 4, None, "ansible_group_priority must be an integer, got 'high'"),
        ("bad_literal.ini", 2, None, "cannot read value '{[1]: 2}': unhashable type: 'list'"),
        ("looks_yaml.ini", 1, None, "invalid host '---': '---' starts a YAML document, not an INI host"),
        ("not_utf8.ini", 3, None, "not valid UTF-8"),
        ("bad_yaml.yml", 4, 4, "invalid YAML: did not find expected key"),
        ("hosts_list.yml", 2, 3, "invalid 'hosts' in group 'web': expected a mapping, got a list"),
        ("vars_scalar.yml", 2, 3, "invalid 'vars' in group 'web': expected a mapping, got an integer"),
        ("host_number.yml", 3, 5, "host pattern 5 must be a string (quote numbers)"),
        ("host_vars_list.yml", 3, 5, "variables of host 'web1' must be a mapping, got a list"),
        ("top_list.yml", None, None, "a YAML inventory must be a mapping of group names, got a list"),
        ("plugin.yml", 1, 1, "inventory plugins are not supported (plugin: aws_ec2); only static inventories are"),
        ("cycle.yml", 3, 5, "group 'b' would be its own ancestor: b -> a -> b"),
        ("range.yml", 3, 5, "bad range [1:x] in host pattern 'web[1:x]': begin and end must both be numbers or both be letters"),
        ("vault.yml", 3, 13, "the vault text is damaged (not the hex Ansible Vault writes)"),
        ("bad.toml", 1, 5, "invalid TOML: Expected ']' at the end of a table declaration"),
    ],
)  # fmt: skip
def test_inventory_errors_name_file_line_and_problem(
    source: str, line: int | None, col: int | None, message: str
) -> None:
    """A broken inventory fails with the exact problem at file:line(:col)."""
    with pytest.raises(InventoryError) as exc:
        load_inventory(ERRORS / source)
    assert exc.value.message == message
    assert exc.value.location is not None
    assert exc.value.location.path == str(ERRORS / source)
    assert (exc.value.location.line, exc.value.location.col) == (line, col)
    assert exc.value.exit_code == 2


@pytest.mark.parametrize(
    ("source", "file", "line", "message"),
    [
        ("bad_group_vars", "group_vars/web.yml", None, "a vars file must be a mapping of variables, got a list"),
        ("bad_host_vars", "host_vars/web1.yml", 3, "invalid YAML: did not find expected node content"),
    ],
)  # fmt: skip
def test_vars_file_errors_name_the_vars_file(
    source: str, file: str, line: int | None, message: str
) -> None:
    """A broken group_vars/host_vars file is named, with its line when known."""
    with pytest.raises(InventoryError) as exc:
        load_inventory(ERRORS / source / "hosts.ini")
    assert exc.value.message == message
    assert exc.value.location is not None
    assert exc.value.location.path == str(ERRORS / source / file)
    assert exc.value.location.line == line


def test_error_renders_the_offending_line() -> None:
    """render() prints the location, the message and the source line like a compiler."""
    with pytest.raises(InventoryError) as exc:
        load_inventory(ERRORS / "unknown_section.ini")
    assert exc.value.render() == (
        f"{ERRORS / 'unknown_section.ini'}:4: unknown section type 'foo' in [web:foo]"
        " (expected [group], [group:vars] or [group:children])\n    [web:foo]"
    )


def test_unknown_names_are_refused() -> None:
    """Asking for the vars of an unknown host or the graph of an unknown group is an error."""
    inventory = load_inventory(SAMPLE)
    with pytest.raises(NoHostsMatched):
        inventory.host_vars("nope")
    with pytest.raises(PatternError):
        inventory.graph("nope")
