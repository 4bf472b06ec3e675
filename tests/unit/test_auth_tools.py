"""The tools around tokens: `nexus-streams token`, `--token` / NEXUS_TOKEN and NexusClient's header."""

from __future__ import annotations

import jwt
import pytest
from typer.testing import CliRunner

from nexus_streams import cli
from nexus_streams.client import NexusClient
from nexus_streams.settings import Settings

SECRET = "t" * 40


def decode(token: str) -> dict[str, object]:
    return jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_aud": False})


@pytest.mark.parametrize(
    ("args", "scope", "ttl_s"),
    [
        (
            ["--sub", "alice", "--scope", "relationships:write:alice queries:read:alice"],
            "relationships:write:alice queries:read:alice",
            3600,
        ),
        (["--sub", "ops", "--scope", "patterns:admin", "--ttl", "30m"], "patterns:admin", 1800),
        (["--sub", "reader", "--ttl", "90"], None, 90),
    ],
)
def test_cli_token__mints_an_hs256_token(args: list[str], scope: str | None, ttl_s: int) -> None:
    done = CliRunner().invoke(cli.app, ["token", *args], env={"NEXUS_AUTH_HS256_SECRET": SECRET})
    assert done.exit_code == 0, done.output
    claims = decode(done.stdout.strip())
    assert claims["sub"] == args[1]
    assert claims.get("scope") == scope
    assert int(claims["exp"]) - int(claims["iat"]) == ttl_s  # type: ignore[call-overload]


def test_cli_token__with_issuer_and_audience() -> None:
    env = {"NEXUS_AUTH_HS256_SECRET": SECRET, "NEXUS_AUTH_ISSUER": "dev", "NEXUS_AUTH_AUDIENCE": "nexus"}
    done = CliRunner().invoke(cli.app, ["token", "--sub", "alice"], env=env)
    assert done.exit_code == 0, done.output
    claims = jwt.decode(done.stdout.strip(), SECRET, algorithms=["HS256"], audience="nexus", issuer="dev")
    assert claims["sub"] == "alice"


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"NEXUS_AUTH_HS256_SECRET": ""}, [], "NEXUS_AUTH_HS256_SECRET is not set"),
        ({"NEXUS_AUTH_HS256_SECRET": "short"}, [], "at least 32 bytes"),
        ({"NEXUS_AUTH_HS256_SECRET": SECRET}, ["--ttl", "forever"], "not a duration"),
    ],
)
def test_cli_token__refuses(env: dict[str, str], args: list[str], message: str) -> None:
    done = CliRunner().invoke(cli.app, ["token", "--sub", "alice", *args], env=env)
    assert done.exit_code == 2
    assert message in " ".join((done.stderr or done.output).split())


def token(sub: str = "alice") -> str:
    return jwt.encode({"sub": sub, "exp": 4_000_000_000}, SECRET, "HS256")


async def test_client__sends_its_token_and_names_its_subject() -> None:
    client = NexusClient(Settings(), token=token())
    assert client._headers == [("authorization", f"Bearer {token()}".encode())]
    assert client.principal == "alice"


async def test_client__token_from_nexus_token() -> None:
    client = NexusClient(Settings(token=token("bob")))
    assert client._headers is not None and client.principal == "bob"


async def test_client__a_given_principal_wins_and_no_token_sends_no_header() -> None:
    assert NexusClient(Settings(), token=token(), principal="carol").principal == "carol"
    plain = NexusClient(Settings())
    assert plain._headers is None and plain.principal == "client"


@pytest.mark.parametrize(
    ("given", "env", "principal", "sends"),
    [
        (None, None, "cli", False),
        (token(), None, "alice", True),
        (None, token("bob"), "bob", True),
        (token(), token("bob"), "alice", True),
    ],
)
async def test_cli_client__token_option_else_nexus_token(
    monkeypatch: pytest.MonkeyPatch, given: str | None, env: str | None, principal: str, sends: bool
) -> None:
    if env is not None:
        monkeypatch.setenv("NEXUS_TOKEN", env)
    else:
        monkeypatch.delenv("NEXUS_TOKEN", raising=False)
    client = cli._client(given)
    assert client.principal == principal
    assert (client._headers is not None) is sends
