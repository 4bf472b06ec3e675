"""NEXUS_KAFKA_* -> the options of every Kafka client of the package (nexus_streams/connection.py)."""

from __future__ import annotations

import ast
import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import ValidationError

from nexus_streams.connection import broker_credentials, kafka_options, ssl_context
from nexus_streams.settings import Settings

PACKAGE = Path(__file__).resolve().parents[2] / "nexus_streams"
BOOTSTRAP = "broker-1:9094,broker-2:9094"


def settings(**fields: Any) -> Settings:
    return Settings(kafka_bootstrap=BOOTSTRAP, **fields)


@pytest.fixture(scope="module")
def pem_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed CA certificate (and its key), as an operator would have them."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nexus test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("pem")
    (folder / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return {"ca": str(folder / "ca.pem"), "key": str(folder / "key.pem")}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {"security_protocol": "PLAINTEXT"}),
        (
            {
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_username": "nexus-worker",
                "kafka_sasl_password": "s3cret",
            },
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_plain_username": "nexus-worker",
                "sasl_plain_password": "s3cret",
            },
        ),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": "SCRAM-SHA-512",
                "kafka_sasl_username": "nexus-worker",
                "kafka_sasl_password": "s3cret",
            },
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": "nexus-worker",
                "sasl_plain_password": "s3cret",
                "ssl_context": ssl.SSLContext,
            },
        ),
        ({"kafka_security_protocol": "SSL"}, {"security_protocol": "SSL", "ssl_context": ssl.SSLContext}),
    ],
    ids=["plaintext", "sasl-plain", "sasl-ssl-scram", "ssl"],
)
def test_kafka_options__by_protocol(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    options = kafka_options(settings(**fields))
    assert options.pop("bootstrap_servers") == BOOTSTRAP
    assert set(options) == set(expected)
    for name, value in expected.items():
        if isinstance(value, type):
            assert isinstance(options[name], value), name
        else:
            assert options[name] == value, name


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"kafka_security_protocol": "SSL"},
        {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u", "kafka_sasl_password": "p"},
        {
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "SCRAM-SHA-256",
            "kafka_sasl_username": "u",
            "kafka_sasl_password": "p",
        },
    ],
    ids=["plaintext", "ssl", "sasl-plaintext", "sasl-ssl"],
)
def test_broker_credentials__faust_maps_them_to_the_same_options(fields: dict[str, Any]) -> None:
    """The worker's own consumer and producer (Faust's) connect as the package's other clients."""
    s = settings(**fields)
    faust_options = dict(credentials_to_aiokafka_auth(broker_credentials(s)))
    ours = kafka_options(s)
    del ours["bootstrap_servers"]
    if faust_options.get("ssl_context") is None:
        faust_options.pop("ssl_context", None)
    assert set(faust_options) == set(ours)
    for name, value in ours.items():
        if name == "ssl_context":
            assert isinstance(faust_options[name], ssl.SSLContext)
        else:
            assert faust_options[name] == value, name


def test_ssl_context__ca_file_verifies_with_it(pem_files: dict[str, str]) -> None:
    context = ssl_context(settings(kafka_security_protocol="SSL", kafka_ssl_ca_file=pem_files["ca"]))
    assert context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert [dict(c["subject"][0])["commonName"] for c in context.get_ca_certs()] == ["nexus test CA"]


def test_ssl_context__client_certificate_and_hostname_check(pem_files: dict[str, str]) -> None:
    context = ssl_context(
        settings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_username="u",
            kafka_sasl_password="p",
            kafka_ssl_ca_file=pem_files["ca"],
            kafka_ssl_cert_file=pem_files["ca"],
            kafka_ssl_key_file=pem_files["key"],
            kafka_ssl_check_hostname=False,
        )
    )
    assert context is not None
    assert not context.check_hostname


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kafka_ssl_ca_file": "/nonexistent/ca.pem"}, "NEXUS_KAFKA_SSL_CA_FILE: /nonexistent/ca.pem is not"),
        ({"kafka_ssl_cert_file": "/nonexistent/c.pem"}, "NEXUS_KAFKA_SSL_CERT_FILE"),
    ],
)
def test_ssl_context__unreadable_file__named(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ssl_context(settings(kafka_security_protocol="SSL", **fields))


def test_ssl_context__not_a_certificate__refused(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(ValueError, match="NEXUS_KAFKA_SSL_"):
        ssl_context(settings(kafka_security_protocol="SSL", kafka_ssl_ca_file=str(bogus)))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"kafka_security_protocol": "SASL_SSL"},
            "needs NEXUS_KAFKA_SASL_USERNAME and NEXUS_KAFKA_SASL_PASSWORD",
        ),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u"},
            "needs NEXUS_KAFKA_SASL_USERNAME and NEXUS_KAFKA_SASL_PASSWORD",
        ),
        ({"kafka_sasl_username": "u", "kafka_sasl_password": "p"}, "sends no SASL credentials"),
        ({"kafka_ssl_ca_file": "/etc/ssl/ca.pem"}, "does not use TLS"),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_key_file": "/k.pem"},
            "NEXUS_KAFKA_SSL_KEY_FILE needs NEXUS_KAFKA_SSL_CERT_FILE",
        ),
        ({"kafka_security_protocol": "SASL"}, "kafka_security_protocol"),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
    ],
)
def test_settings__incomplete_kafka_security__refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        settings(**fields)


def test_settings__from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXUS_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("NEXUS_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("NEXUS_KAFKA_SASL_USERNAME", "worker")
    monkeypatch.setenv("NEXUS_KAFKA_SASL_PASSWORD", "pw")
    monkeypatch.setenv("NEXUS_KAFKA_SSL_CA_FILE", "")  # empty is unset
    options = kafka_options(Settings())
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert options["sasl_plain_username"] == "worker"
    assert "pw" not in repr(Settings())  # the password is a secret


#: aiokafka clients made from a bare bootstrap string on purpose: why
BARE_CLIENTS = {
    ("streams/admin.py", "delete_topics_with_prefixes"): "tests' and benches' cleanup of the local stack",
}
CLIENT_CLASSES = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"}


def test_every_kafka_client_of_the_package_takes_kafka_options() -> None:
    """One place builds the options: a new client that forgets them would connect without TLS or
    credentials (and fail against a secured broker only in production)."""
    found, bare = 0, []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) in CLIENT_CLASSES):
                    continue
                found += 1
                spread = [
                    k.value
                    for k in node.keywords
                    if k.arg is None
                    and isinstance(k.value, ast.Call)
                    and getattr(k.value.func, "id", None) == "kafka_options"
                ]
                where = (str(path.relative_to(PACKAGE)), function.name)
                if not spread and where not in BARE_CLIENTS:
                    bare.append(f"{where[0]}:{node.lineno} in {where[1]}")
    assert found >= 8, found  # client (2), admin (2), follower, dead-letter watch and tools (2)
    assert not bare, f"Kafka clients without **kafka_options(settings): {bare}"
