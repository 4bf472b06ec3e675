"""How every Kafka client of the package connects: the brokers, TLS and the SASL identity of
NEXUS_KAFKA_* (docs/security.md, "The worker's own Kafka identity").

`kafka_options(settings)` is what each aiokafka client the package creates takes (the worker's
topic creation, pattern-event follower and dead-letter watch, `NexusClient`, the CLI and the
dead-letter tools); `broker_credentials(settings)` is the same for Faust's own consumer and
producer. Nothing else builds these options.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from nexus_streams.settings import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL (None: no TLS); a file it cannot read stops here, named."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    for name, path in (
        ("NEXUS_KAFKA_SSL_CA_FILE", settings.kafka_ssl_ca_file),
        ("NEXUS_KAFKA_SSL_CERT_FILE", settings.kafka_ssl_cert_file),
        ("NEXUS_KAFKA_SSL_KEY_FILE", settings.kafka_ssl_key_file),
    ):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{name}: {path} is not a readable file")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.kafka_ssl_ca_file)
        if settings.kafka_ssl_cert_file is not None:
            context.load_cert_chain(settings.kafka_ssl_cert_file, settings.kafka_ssl_key_file)
    except ssl.SSLError as exc:
        raise ValueError(f"NEXUS_KAFKA_SSL_*: cannot use the certificate files: {exc}") from None
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def kafka_options(settings: Settings) -> dict[str, Any]:
    """`bootstrap_servers` and the security options of an aiokafka producer, consumer or admin client."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL_"):
        assert settings.kafka_sasl_password is not None  # Settings refuses SASL_* without both
        options |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password.get_secret_value(),
        }
    return options


def broker_credentials(settings: Settings) -> Any:
    """Faust's `broker_credentials` for the same options (None: PLAINTEXT). Faust maps them back to
    `kafka_options`' (tests/unit/test_connection.py holds the two equal)."""
    import faust  # the tools (client, CLI) import this module and need no Faust

    protocol = settings.kafka_security_protocol
    context = ssl_context(settings)
    if protocol.startswith("SASL_"):
        assert settings.kafka_sasl_password is not None
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return None
