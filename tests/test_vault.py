"""Ansible Vault: files and values that the real `ansible-vault` wrote (1.1, and 1.2 with vault
ids) are read as `ansible-inventory` reads them; a wrong or missing password names file:line.

The fixtures are made at test time by ansible-core's own `ansible-vault` (a test dependency),
with the passwords written below."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from easytask.config import load_settings
from easytask.errors import ConfigError, InventoryError, UsageError
from easytask.inventory import load_inventory
from easytask.plan import parse_extra_vars
from easytask.playbook import PlaybookErrors, parse_playbook
from easytask.vault import Vault, VaultError, VaultText, vault_values
from easytask.vaultpass import load_vault
from tests.conftest import write

BIN = Path(sys.executable).parent
PROD_PASSWORD = "prod-pass phrase"  # vault id `prod`
DEFAULT_PASSWORD = "default-pass"  # --vault-password-file (vault id `default`)
SECRET = "hunter2-from-the-vault"
TOKEN = "tok-1234567"


def ansible(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run an ansible-core tool with a private ANSIBLE_HOME; fail with its output."""
    env = dict(os.environ, ANSIBLE_HOME=str(cwd / ".ansible"), ANSIBLE_NOCOLOR="1")
    done = subprocess.run(
        [str(BIN / tool), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def easytask(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "easytask", *args],
        cwd=cwd,
        env=dict(os.environ, **(env or {})),
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An inventory whose group_vars/prod.yml is encrypted whole (1.2, vault id prod) and whose
    host_vars hold inline `!vault` values (1.1 with the default password, 1.2 with prod)."""
    root = tmp_path_factory.mktemp("vault")
    write(root / "prod.pw", PROD_PASSWORD + "\n")
    write(root / "default.pw", DEFAULT_PASSWORD + "\n")
    write(root / "wrong.pw", "not it\n")
    write(
        root / "inv" / "hosts.ini",
        """\
        [prod]
        web1
        web2
        """,
    )
    group_file = write(
        root / "inv" / "group_vars" / "prod.yml",
        f"""\
        db_password: {SECRET}
        db_port: 5432
        short: "ab"
        users:
          - name: admin
            key: {SECRET}-admin
        """,
    )
    ansible("ansible-vault", "encrypt", "--vault-id", "prod@prod.pw", str(group_file), cwd=root)
    inline_11 = ansible(
        "ansible-vault",
        "encrypt_string",
        "--vault-password-file",
        "default.pw",
        TOKEN,
        "--name",
        "api_token",
        cwd=root,
    ).stdout
    inline_12 = ansible(
        "ansible-vault",
        "encrypt_string",
        "--vault-id",
        "prod@prod.pw",
        "multi\nline value",
        "--name",
        "cert",
        cwd=root,
    ).stdout
    (root / "inv" / "host_vars").mkdir()
    (root / "inv" / "host_vars" / "web1.yml").write_text("plain: visible\n" + inline_11 + inline_12)
    return root


@pytest.mark.parametrize("action", [["--list"], ["--host", "web1"], ["--graph", "--vars"]])
def test_group_vars_file_and_inline_values_as_ansible_reads_them(
    tree: Path, action: list[str]
) -> None:
    """`easytask inventory` prints byte for byte what `ansible-inventory` prints with the same
    passwords: encrypted files in clear, inline values as their ciphertext in JSON."""
    ids = ["--vault-id", "prod@prod.pw", "--vault-password-file", "default.pw"]
    theirs = ansible("ansible-inventory", "-i", "inv/hosts.ini", *ids, *action, cwd=tree).stdout
    ours = easytask("inventory", "-i", "inv/hosts.ini", *ids, *action, cwd=tree)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs
    if action != ["--list"]:
        return
    listed = json.loads(ours.stdout)["_meta"]["hostvars"]
    assert listed["web2"]["db_password"] == SECRET
    assert listed["web1"]["api_token"]["__ansible_vault"].startswith("$ANSIBLE_VAULT;1.1;AES256")
    assert listed["web1"]["cert"]["__ansible_vault"].startswith("$ANSIBLE_VAULT;1.2;AES256;prod")


def test_decrypted_values_are_vault_texts(tree: Path) -> None:
    """Every string that came from a vault (an encrypted file's, nested ones too, and inline
    values) is a VaultText, masked in job output from 4 characters; numbers and plain values are
    not."""
    vault = load_vault(str(tree / "default.pw"), [f"prod@{tree / 'prod.pw'}"])
    inventory = load_inventory(tree / "inv" / "hosts.ini", vault=vault)
    web1 = inventory.host_vars("web1")
    assert web1["db_password"] == SECRET and isinstance(web1["db_password"], VaultText)
    assert web1["api_token"] == TOKEN and isinstance(web1["api_token"], VaultText)
    assert web1["cert"] == "multi\nline value"
    assert web1["db_port"] == 5432
    assert not isinstance(web1["plain"], VaultText)
    assert isinstance(web1["short"], VaultText)  # but too short to be masked
    assert vault_values(web1) == sorted(
        [SECRET, f"{SECRET}-admin", TOKEN, "admin", "multi\nline value"]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--vault-password-file", "default.pw"],
            "inv/group_vars/prod.yml:1:1: cannot decrypt the vault file with the given password"
            " (vault id 'prod')",
        ),
        (
            ["--vault-id", "prod@wrong.pw", "--vault-password-file", "default.pw"],
            "inv/group_vars/prod.yml:1:1: cannot decrypt the vault file with the given password"
            " (vault id 'prod')",
        ),
        (
            [],
            "inv/group_vars/prod.yml:1:1: cannot decrypt the vault file: no vault password given"
            " for vault id 'prod' (use --vault-password-file or --vault-id)",
        ),
        (
            ["--vault-id", "prod@prod.pw"],
            "inv/host_vars/web1.yml:2:12: cannot decrypt the vault value with the given password",
        ),
    ],
)
def test_a_wrong_or_missing_password_names_the_file_and_line(
    tree: Path, args: list[str], message: str
) -> None:
    """No traceback: the file, line and column of the value, and its vault id."""
    done = easytask("inventory", "-i", "inv/hosts.ini", "--list", *args, cwd=tree)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines()[0] == f"easytask: {message}"
    assert "Traceback" not in done.stderr


def test_password_from_the_environment_and_from_scripts(tree: Path) -> None:
    """EASYTASK_VAULT_PASSWORD_FILE and EASYTASK_VAULT_ID (comma-separated) as the flags; an
    executable password file is run for its output, a `*-client` one asked for its vault id."""
    script = write(tree / "pass.sh", f"#!/bin/sh\necho '{DEFAULT_PASSWORD}'\n")
    script.chmod(0o755)
    client = write(
        tree / "vault-client.sh",
        f"""\
        #!/bin/sh
        [ "$1" = --vault-id ] && [ "$2" = prod ] || exit 7
        echo '{PROD_PASSWORD}'
        """,
    )
    client.chmod(0o755)
    env = {
        "EASYTASK_VAULT_PASSWORD_FILE": str(script),
        "EASYTASK_VAULT_ID": f"other@{tree / 'wrong.pw'},prod@{client}",
    }
    done = easytask("inventory", "-i", "inv/hosts.ini", "--host", "web1", cwd=tree, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["db_password"] == SECRET
    config = write(tree / "c.toml", 'vault_id = ["a@x.pw"]\nvault_password_file = "f.pw"\n')
    settings = load_settings({}, env={**env, "EASYTASK_CONFIG": str(config)})
    assert settings.vault_id == (f"other@{tree / 'wrong.pw'}", f"prod@{client}")
    assert settings.vault_password_file == str(script)
    from_file = load_settings({}, env={"EASYTASK_CONFIG": str(config)})
    assert (from_file.vault_id, from_file.vault_password_file) == (("a@x.pw",), "f.pw")
    flags = load_settings({"vault_id": ["b@y.pw"]}, env={**env, "EASYTASK_CONFIG": str(config)})
    assert flags.vault_id == ("b@y.pw",)

    failing = write(tree / "fail-client.sh", "#!/bin/sh\nexit 3\n")
    failing.chmod(0o755)
    with pytest.raises(ConfigError, match="fail-client.sh failed \\(exit code 3\\)"):
        load_vault(None, [f"prod@{failing}"])
    with pytest.raises(ConfigError, match="was not found"):
        load_vault(str(tree / "missing.pw"))
    with pytest.raises(ConfigError, match="asking for a vault password is not supported"):
        load_vault(None, ["prod@prompt"])
    empty = write(tree / "empty.pw", "\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_vault(str(empty))


def test_vaulted_vars_files(tree: Path) -> None:
    """A playbook's vars_files may be encrypted whole or hold `!vault` values; a wrong password
    names the vars file and line."""
    book = tree / "book"
    book.mkdir()
    secrets_file = write(book / "secrets.yml", f"api_password: {SECRET}\n")
    ansible("ansible-vault", "encrypt", "--vault-id", "prod@prod.pw", str(secrets_file), cwd=tree)
    inline = ansible(
        "ansible-vault", "encrypt_string", "--vault-password-file", "default.pw", TOKEN,
        "--name", "token", cwd=tree,
    ).stdout  # fmt: skip
    (book / "more.yml").write_text("region: eu\n" + inline)
    text = "hosts: all\nvars_files: [secrets.yml, more.yml]\ntasks: [{name: a, shell: 'echo {{ token }}'}]\n"
    vault = Vault([("prod", PROD_PASSWORD.encode()), ("default", DEFAULT_PASSWORD.encode())])
    playbook = parse_playbook(text, book / "play.yml", vault)
    assert playbook.vars == {"api_password": SECRET, "region": "eu", "token": TOKEN}
    assert vault_values(playbook.vars) == [SECRET, TOKEN]

    with pytest.raises(PlaybookErrors) as exc:
        parse_playbook(text, book / "play.yml", Vault([("prod", PROD_PASSWORD.encode())]))
    assert str(exc.value) == (
        f"{book}/more.yml:2:8: cannot decrypt the vault value with the given password"
    )
    with pytest.raises(PlaybookErrors) as exc:
        parse_playbook(text, book / "play.yml")
    assert str(exc.value).splitlines()[0] == (
        f"{book}/secrets.yml:1:1: cannot decrypt the vault file: no vault password given for"
        " vault id 'prod' (use --vault-password-file or --vault-id)"
    )
    # read only to be sent to the server (which decrypts): nothing is decrypted here
    sent = parse_playbook(text, book / "play.yml", Vault(locked=True))
    assert sent.vars == {"region": "eu", "token": ""}


def test_vault_values_in_the_play_and_an_encrypted_playbook(tree: Path) -> None:
    """`!vault` in the play's `vars` is decrypted (and masked, as every vault value); a playbook
    encrypted whole is refused by name; `-e @file` takes no vault values."""
    inline = ansible(
        "ansible-vault", "encrypt_string", "--vault-id", "prod@prod.pw", TOKEN,
        "--name", "token", cwd=tree,
    ).stdout  # fmt: skip
    body = "".join("  " + line + "\n" for line in inline.splitlines())
    text = f"hosts: all\nvars:\n{body}tasks: [{{name: a, shell: 'echo {{{{ token }}}}'}}]\n"
    book = tree / "inplay.yml"
    playbook = parse_playbook(text, book, Vault([("prod", PROD_PASSWORD.encode())]))
    assert vault_values(playbook.vars) == [TOKEN]
    with pytest.raises(PlaybookErrors) as exc:
        parse_playbook(text, book, Vault([("prod", b"wrong")]))
    assert str(exc.value) == (
        f"{book}:3:10: cannot decrypt the vault value with the given password (vault id 'prod')"
    )
    encrypted = write(tree / "whole.yml", "hosts: all\ntasks: [{name: a, shell: x}]\n")
    ansible("ansible-vault", "encrypt", "--vault-id", "prod@prod.pw", str(encrypted), cwd=tree)
    with pytest.raises(PlaybookErrors) as exc:
        parse_playbook(encrypted.read_text(), encrypted, Vault([("prod", PROD_PASSWORD.encode())]))
    assert str(exc.value) == (
        f"{encrypted}:1:1: an encrypted playbook is not supported: put its secrets in vaulted"
        " vars_files"
    )
    extra = write(tree / "extra.yml", inline)
    with pytest.raises(UsageError, match="!vault"):
        parse_extra_vars([f"@{extra}"])


def test_play_check_masks_vault_values(tree: Path) -> None:
    """`play --check` renders the commands with every vault value as ****."""
    write(
        tree / "check.yml",
        """\
        hosts: prod
        tasks:
          - name: show
            shell: echo "{{ db_password }} {{ db_port }} {{ plain | default('') }}"
        """,
    )
    ids = ["--vault-id", "prod@prod.pw", "--vault-password-file", "default.pw"]
    done = easytask("play", "check.yml", "--check", "-i", "inv/hosts.ini", *ids, cwd=tree)
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout
    assert 'web1: echo "**** 5432 visible"' in done.stdout


def test_inventory_without_a_password_and_without_vault_values(tree: Path) -> None:
    """An inventory with no vault in it needs no password."""
    write(tree / "plain" / "hosts.ini", "[web]\nweb9\n")
    write(tree / "plain" / "group_vars" / "web.yml", "x: 1\n")
    assert load_inventory(tree / "plain" / "hosts.ini").host_vars("web9") == {"x": 1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("$ANSIBLE_VAULT;1.3;AES256\n6162\n", "unsupported vault format version '1.3'"),
        ("$ANSIBLE_VAULT;1.1;AES128\n6162\n", "unsupported vault cipher 'AES128'"),
        ("$ANSIBLE_VAULT;1.1;AES256\nzz\n", "the vault text is damaged"),
        ("$ANSIBLE_VAULT\n", "not an Ansible Vault text"),
    ],
)
def test_malformed_vault_texts(text: str, message: str) -> None:
    with pytest.raises(VaultError, match=message):
        Vault([("default", b"x")]).decrypt(text)


def test_a_changed_ciphertext_is_refused(tree: Path) -> None:
    """The HMAC covers the ciphertext: one changed digit and no password opens it."""
    text = (tree / "inv" / "group_vars" / "prod.yml").read_text()
    vault = Vault([("prod", PROD_PASSWORD.encode())])
    assert SECRET in vault.decrypt_text(text)
    header, body = text.split("\n", 1)
    body = body.replace("\n", "")
    # the last hex pair that spells a digit of the ciphertext's hex: spell another digit
    at = max(i for i in range(0, len(body), 2) if body[i] == "3" and body[i + 1].isdigit())
    changed = body[: at + 1] + ("1" if body[at + 1] != "1" else "2") + body[at + 2 :]
    with pytest.raises(VaultError, match="cannot decrypt the vault value with the given password"):
        vault.decrypt(header + "\n" + changed)


def test_an_inventory_error_is_still_an_inventory_error(tree: Path) -> None:
    with pytest.raises(InventoryError) as exc:
        load_inventory(tree / "inv" / "hosts.ini", vault=Vault([("x", b"y")]))
    assert exc.value.exit_code == 2


def test_json_vault_values_as_ansible_reads_them(tree: Path) -> None:
    """`{"__ansible_vault": ...}` in a JSON vars file (what `--host` prints) is a vault value."""
    ids = ["--vault-id", "prod@prod.pw", "--vault-password-file", "default.pw"]
    shown = ansible("ansible-inventory", "-i", "inv/hosts.ini", *ids, "--host", "web1", cwd=tree)
    write(tree / "json" / "hosts.ini", "[web]\nweb3\n")
    write(tree / "json" / "host_vars" / "web3.json", shown.stdout)
    theirs = ansible("ansible-inventory", "-i", "json/hosts.ini", *ids, "--list", cwd=tree).stdout
    ours = easytask("inventory", "-i", "json/hosts.ini", *ids, "--list", cwd=tree)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs
    vault = Vault([("default", DEFAULT_PASSWORD.encode()), ("prod", PROD_PASSWORD.encode())])
    web3 = load_inventory(tree / "json" / "hosts.ini", vault=vault).host_vars("web3")
    assert web3["api_token"] == TOKEN and isinstance(web3["api_token"], VaultText)
    wrong = easytask("inventory", "-i", "json/hosts.ini", "--list", cwd=tree)
    assert wrong.returncode == 2
    assert wrong.stderr.startswith(
        "easytask: json/host_vars/web3.json: cannot decrypt the vault value: no vault password"
    ), wrong.stderr


def test_play_without_check_refuses_vault_flags(tree: Path) -> None:
    """A run decrypts on the server: vault flags given to `play` without --check are refused,
    never silently dropped."""
    done = easytask("play", "check.yml", "--vault-password-file", "default.pw", cwd=tree)
    assert done.returncode == 2
    assert done.stderr.startswith(
        "easytask: play: --vault-password-file/--vault-id are only read with --check"
    ), done.stderr
