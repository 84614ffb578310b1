"""The `mosaic` CLI end to end: a real launcher-started gateway, through nginx's admin listener.

The happy path creates a peer, a user in a team, a grant from a scope file and an enrollment
token (all with --json, parsed here), checks the token against the database (hash only) and the
URL against the gateway (the CA pin is the published root; the URL redeems on the public
listener), then revokes. The error paths check exit codes and the printed error code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from fedcore import pki
from fedcore.cli.client import resolve_target
from fedcore.cli.common import expires_arg, since_arg
from fedcore.cli.main import build_parser, main
from fedcore.csr import make_csr
from fedcore.tokens import hash_token
from tests.support.cli import _env, mosaic, mosaic_json, refused
from tests.support.db import fetch_all, fetch_one
from tests.support.stack import Gateway


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


def _published_root_pin(gateway: Gateway) -> str:
    bundle = pki.load_pem_chain(Path(gateway.ca_bundle).read_bytes())
    root = next(c for c in bundle if c.subject == c.issuer)
    return hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()


async def test_peer_user_grant_token_revoke_with_json(gateway_a: Gateway, tmp_path: Path) -> None:
    gw = gateway_a
    peer = mosaic_json(
        "federation",
        "peer",
        "create",
        f"gw-b-{_suffix()}",
        "--endpoint",
        "https://b.example:8443",
        gateway=gw,
    )
    assert peer["state"] == "pending"
    user = mosaic_json(
        "user", "create", f"alice-{_suffix()}", "--display-name", "Alice", gateway=gw
    )
    team = mosaic_json("team", "create", f"ops-{_suffix()}", gateway=gw)
    member = mosaic_json("team", "add-member", team["id"], user["id"], gateway=gw)
    assert member == {**member, "team_id": team["id"], "user_id": user["id"]}

    scope_file = tmp_path / "scope.json"
    scope_file.write_text(
        json.dumps(
            {
                "resources": ["tasks", "notes"],
                "excluded_resources": ["credentials"],
                "include_teams": [team["id"]],
                "include_personal": True,
                "max_rows_per_query": 100,
            }
        )
    )
    grant = mosaic_json(
        "federation",
        "grant",
        "create",
        "--user",
        user["id"],
        "--peer",
        peer["id"],
        "--scope",
        str(scope_file),
        gateway=gw,
    )
    assert grant["status"] == "pending"
    assert grant["scope"]["include_teams"] == [team["id"]]
    assert mosaic_json("federation", "grant", "show", grant["id"], gateway=gw) == grant
    listed = mosaic_json("federation", "grant", "list", "--peer", peer["id"], gateway=gw)
    assert [g["id"] for g in listed["items"]] == [grant["id"]]

    issued = mosaic_json(
        "federation",
        "grant",
        "token",
        grant["id"],
        "--ttl",
        "600",
        "--peer",
        peer["id"],
        gateway=gw,
    )
    token = issued["token"]
    pin = _published_root_pin(gw)
    assert issued["ca_fingerprint_sha256"] == pin
    assert issued["enrollment_url"] == (
        f"{gw.public_url}/api/federation/v1/enrollment/{token}#ca_fp={pin}"
    )
    # Only the hash is stored.
    [(stored_hash, ttl)] = fetch_all(
        gw.database_url,
        "SELECT token_hash, extract(epoch FROM expires_at - created_at) "
        "FROM federation_enrollment_tokens WHERE grant_id = %s",
        (grant["id"],),
    )
    assert stored_hash == hash_token(token)
    assert 595 <= float(ttl) <= 605
    dump = repr(fetch_all(gw.database_url, "SELECT * FROM federation_enrollment_tokens"))
    assert token not in dump

    # The URL is real: it redeems on the public listener, over TLS verified by the pinned bundle.
    url = issued["enrollment_url"].split("#", 1)[0]
    async with httpx.AsyncClient(verify=gw.tls_context(), timeout=30) as client:
        redeemed = await client.post(url, json={"csr_pem": make_csr(pki.new_ec_key(), "gw-b")})
    assert redeemed.status_code == 201, redeemed.text
    assert mosaic_json("federation", "grant", "show", grant["id"], gateway=gw)["status"] == "active"

    revoked = mosaic_json(
        "federation", "grant", "revoke", grant["id"], "--reason", "test over", gateway=gw
    )
    assert revoked["status"] == "revoked"
    assert revoked["revoked_reason"] == "test over"
    assert [c["status"] for c in revoked["certificate_revocations"]] == ["revoked"]

    # Illegal transitions and refused tokens: exit 1, the server's code printed, row unchanged.
    before = fetch_one(
        gw.database_url,
        "SELECT status::text, revoked_at, revoked_reason FROM federation_grants WHERE id = %s",
        (grant["id"],),
    )
    refused(mosaic("federation", "grant", "revoke", grant["id"], gateway=gw), "invalid_transition")
    refused(mosaic("federation", "grant", "token", grant["id"], gateway=gw), "grant_not_pending")
    after = fetch_one(
        gw.database_url,
        "SELECT status::text, revoked_at, revoked_reason FROM federation_grants WHERE id = %s",
        (grant["id"],),
    )
    assert after == before

    audit = mosaic_json("federation", "audit", "--grant", grant["id"], "--since", "1h", gateway=gw)
    actions = [(i["action"], i["outcome"]) for i in audit["items"]]
    assert ("grant.create", "allowed") in actions
    assert ("grant.token", "allowed") in actions
    assert ("grant.revoke", "allowed") in actions
    assert ("grant.revoke", "denied") in actions


def test_human_output_is_a_table(gateway_a: Gateway) -> None:
    name = f"table-{_suffix()}"
    created = mosaic("federation", "peer", "create", name, gateway=gateway_a)
    assert created.returncode == 0, created.stderr
    assert "name:" in created.stdout
    listed = mosaic("federation", "peer", "list", gateway=gateway_a)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "STATE", "ENDPOINT", "CERT", "NOT", "AFTER"]
    assert any(name in row and "pending" in row for row in rows)


def test_error_paths_print_the_code_and_exit_non_zero(gateway_a: Gateway, tmp_path: Path) -> None:
    gw = gateway_a
    unknown = str(uuid.uuid4())
    refused(mosaic("federation", "grant", "show", unknown, gateway=gw), "grant_not_found")
    as_json = mosaic("federation", "grant", "token", unknown, "--json", gateway=gw)
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["error"]["code"] == "grant_not_found"

    peer = mosaic_json("federation", "peer", "create", f"p-{_suffix()}", gateway=gw)
    user = mosaic_json("user", "create", f"u-{_suffix()}", gateway=gw)
    bad_scope = tmp_path / "bad.json"
    bad_scope.write_text(
        json.dumps({"resources": ["tasks", "credentials"], "include_teams": [str(uuid.uuid4())]})
    )
    grants_before = fetch_one(gw.database_url, "SELECT count(*) FROM federation_grants")
    result = mosaic(
        "federation",
        "grant",
        "create",
        "--user",
        user["id"],
        "--peer",
        peer["id"],
        "--scope",
        str(bad_scope),
        gateway=gw,
    )
    refused(result, "invalid_scope")
    assert "scope.resources[1]" in result.stderr
    assert "scope.include_teams[0]" in result.stderr
    assert fetch_one(gw.database_url, "SELECT count(*) FROM federation_grants") == grants_before

    not_json = tmp_path / "scope.txt"
    not_json.write_text("resources: tasks")
    result = mosaic(
        "federation",
        "grant",
        "create",
        "--user",
        user["id"],
        "--peer",
        peer["id"],
        "--scope",
        str(not_json),
        gateway=gw,
    )
    assert result.returncode == 2
    assert "not valid JSON" in result.stderr

    duplicate = mosaic("federation", "peer", "create", peer["name"], gateway=gw)
    refused(duplicate, "peer_name_taken")
    refused(mosaic("federation", "peer", "resume", peer["id"], gateway=gw), "invalid_transition")


def test_flags_override_and_bad_tokens_are_refused(gateway_a: Gateway) -> None:
    gw = gateway_a
    bare = _env(None)
    ok = mosaic(
        "federation",
        "peer",
        "list",
        "--json",
        "--admin-url",
        gw.admin_url,
        "--token",
        gw.admin_token,
        env=bare,
    )
    assert ok.returncode == 0, ok.stderr
    assert "items" in json.loads(ok.stdout)
    via_env = mosaic(
        "user",
        "list",
        env={**bare, "MOSAIC_ADMIN_URL": gw.admin_url, "MOSAIC_ADMIN_TOKEN": gw.admin_token},
    )
    assert via_env.returncode == 0, via_env.stderr
    refused(
        mosaic("federation", "peer", "list", "--token", "ab" * 32, gateway=gw),
        "admin_token_invalid",
    )


def test_admin_token_create_bootstraps_a_token_from_the_database(gateway_a: Gateway) -> None:
    gw = gateway_a
    user = mosaic_json("user", "create", f"tok-{_suffix()}", gateway=gw)
    result = mosaic(
        "admin",
        "token",
        "create",
        "--role",
        "user",
        "--user",
        user["id"],
        "--json",
        "--database-url",
        gw.database_url,
        env=_env(None),
    )
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    [(stored, role)] = fetch_all(
        gw.database_url,
        "SELECT token_hash, role::text FROM admin_tokens WHERE id = %s",
        (created["token_id"],),
    )
    assert (stored, role) == (hash_token(created["token"]), "user")
    # A user token cannot use the admin API.
    refused(
        mosaic("federation", "peer", "list", "--token", created["token"], gateway=gw),
        "admin_role_required",
    )
    admin = mosaic(
        "admin",
        "token",
        "create",
        "--role",
        "admin",
        "--json",
        "--database-url",
        gw.database_url,
        env=_env(None),
    )
    admin_token = json.loads(admin.stdout)["token"]
    works = mosaic("federation", "peer", "list", "--token", admin_token, gateway=gw)
    assert works.returncode == 0, works.stderr
    nobody = mosaic(
        "admin",
        "token",
        "create",
        "--role",
        "user",
        "--user",
        str(uuid.uuid4()),
        "--database-url",
        gw.database_url,
        env=_env(None),
    )
    refused(nobody, "user_not_found")


# ------------------------------------------------------------------ no gateway needed


def test_no_configuration_is_a_usage_error() -> None:
    result = mosaic("federation", "peer", "list", env=_env(None))
    assert result.returncode == 2
    assert "no admin API" in result.stderr


def test_unknown_gateway_state_and_path_games_are_usage_errors(tmp_path: Path) -> None:
    env = _env(None, MOSAIC_STATE_ROOT=str(tmp_path))
    missing = mosaic("federation", "grant", "list", "--gateway", "zz", env=env)
    assert missing.returncode == 2
    assert "no launcher state file" in missing.stderr
    traversal = mosaic("federation", "grant", "list", "--gateway", "../etc", env=env)
    assert traversal.returncode == 2
    assert "invalid gateway name" in traversal.stderr


def test_an_unreachable_admin_api_exits_3() -> None:
    result = mosaic(
        "federation",
        "peer",
        "list",
        "--admin-url",
        "http://127.0.0.1:9",
        "--token",
        "x",
        env=_env(None),
    )
    assert result.returncode == 3
    assert "cannot reach the admin API" in result.stderr
    assert "x" * 1 not in result.stderr.split("(")[-1]  # the token is not echoed


@pytest.mark.parametrize(
    "url",
    [
        "https://a.example/x#ca_fp=" + "0" * 64,  # not an enrollment path
        "http://a.example/api/federation/v1/enrollment/" + "a" * 64,  # not https
        "https://a.example/api/federation/v1/enrollment/" + "a" * 64 + "#ca_fp=00",  # bad pin
    ],
)
def test_peer_add_refuses_a_malformed_enrollment_url_before_any_call(url: str) -> None:
    env = _env(None, MOSAIC_ADMIN_URL="http://127.0.0.1:9", MOSAIC_ADMIN_TOKEN="x" * 64)
    result = mosaic("federation", "peer", "add", url, env=env)
    assert result.returncode == 2, result.stderr
    assert "error:" in result.stderr


def test_state_file_supplies_what_flags_and_env_do_not(tmp_path: Path) -> None:
    (tmp_path / "gw").mkdir()
    (tmp_path / "gw" / "state.json").write_text(
        json.dumps({"admin_url": "http://10.0.0.1:8080/", "admin_token": "from-state"})
    )
    env = {"MOSAIC_STATE_ROOT": str(tmp_path), "MOSAIC_GATEWAY": "gw"}
    target = resolve_target(admin_url=None, token=None, gateway=None, env=env)
    assert (target.url, target.token) == ("http://10.0.0.1:8080", "from-state")
    flagged = resolve_target(admin_url="http://x:1", token="flag", gateway=None, env=env)
    assert (flagged.url, flagged.token) == ("http://x:1", "flag")
    assert "from-state" not in repr(target)


def test_time_arguments() -> None:
    now = datetime.now(UTC)
    assert abs(datetime.fromisoformat(since_arg("2h")) - (now - timedelta(hours=2))) < timedelta(
        seconds=5
    )
    assert abs(datetime.fromisoformat(expires_arg("7d")) - (now + timedelta(days=7))) < timedelta(
        seconds=5
    )
    assert since_arg("2030-01-02T03:04:05") == "2030-01-02T03:04:05+00:00"
    assert expires_arg("2030-01-02T03:04:05+02:00") == "2030-01-02T03:04:05+02:00"
    for bad in ("yesterday", "2h30m", "-1h"):
        with pytest.raises(argparse.ArgumentTypeError):
            since_arg(bad)


def _commands(parser: argparse.ArgumentParser, prefix: list[str]) -> list[list[str]]:
    found = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _commands(child, [*prefix, name])
    return found


COMMANDS = _commands(build_parser(), [])


def test_the_command_tree_has_every_issue_command() -> None:
    names = {" ".join(c) for c in COMMANDS}
    for expected in (
        "federation grant create",
        "federation grant list",
        "federation grant show",
        "federation grant revoke",
        "federation grant token",
        "federation peer create",
        "federation peer list",
        "federation peer add",
        "federation audit",
        "user create",
        "team create",
        "team add-member",
        "admin token create",
    ):
        assert expected in names


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) or "mosaic" for c in COMMANDS])
def test_help_on_every_level(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mosaic")
