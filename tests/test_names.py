"""The one character rule for agent names and group labels (easytask/names.py)."""

from __future__ import annotations

import pytest

from easytask.names import MAX_NAME, BadName, check_labels, check_name
from easytask.scheduler.hello import BadHello, check_hello


@pytest.mark.parametrize(
    "good",
    ["web1", "prod", "web-servers", "eu_west_1", "_meta2", "db.example.com", "9", "a" * MAX_NAME],
)
def test_real_names_and_ansible_group_names_pass(good: str) -> None:
    """Host-like names and the group names Ansible accepts pass unchanged."""
    assert check_name(good) == good
    assert check_labels([good]) == [good]


@pytest.mark.parametrize(
    "bad",
    [
        "web1;curl x|sh",
        "a,b",
        "",
        " web",
        "web ",
        "web\n",
        "-web",
        ".hidden",
        "web:&prod",
        "web*",
        "~regex",
        "web[0:2]",
        "prod!",
        "$(id)",
        "wéb",
        "a" * (MAX_NAME + 1),
    ],
)
def test_shell_pattern_and_list_characters_are_refused_naming_the_value(bad: str) -> None:
    """A name or label with a shell, pattern or list character is refused; the message names
    the value and what it is."""
    with pytest.raises(BadName) as caught:
        check_name(bad)
    assert repr(bad[:256]) in str(caught.value)
    assert "agent name" in str(caught.value)
    with pytest.raises(BadName, match="group label"):
        check_labels(["web", bad])


def test_a_non_text_value_is_refused() -> None:
    """A number or a list is not a name."""
    for value in (3, None, ["web"]):
        with pytest.raises(BadName):
            check_name(value)


def test_labels_keep_their_order_without_repeats() -> None:
    assert check_labels(["web", "eu", "web"]) == ["web", "eu"]


@pytest.mark.parametrize("bad", ["web1;curl x|sh", "a,b", "web prod", ""])
def test_the_server_refuses_a_hello_with_a_bad_label(bad: str) -> None:
    """The hello check applies the same rule: the refusal names the label."""
    with pytest.raises(BadHello, match=r"groups: group label"):
        check_hello({"groups": ["web", bad]})
    assert check_hello({"groups": ["web", "web", "prod"]})["groups"] == "web,prod"
