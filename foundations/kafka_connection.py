"""How every Kafka client of apro-sync connects: bootstrap servers plus TLS and SASL (managed Kafka).

One `KafkaConnection` renders the same settings for librdkafka (producer, tools, lag exporter), aiokafka (gap
reader) and Faust (worker), so a security setting can never apply to one client and not another.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaAuthError(RuntimeError):
    """The broker refused our TLS or SASL credentials; the message names the settings, never their values."""


@dataclass(frozen=True)
class KafkaConnection:
    bootstrap: str
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_file: Path | None = None
    ssl_cert_file: Path | None = None
    ssl_key_file: Path | None = None
    ssl_key_password: SecretStr | None = None

    @classmethod
    def of(cls, value: "KafkaConnection | str") -> "KafkaConnection":
        """Accept a plain bootstrap string wherever a connection is expected (PLAINTEXT)."""
        return value if isinstance(value, KafkaConnection) else cls(bootstrap=value)

    def __str__(self) -> str:  # used in operator messages: servers only, never credentials
        return self.bootstrap

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def librdkafka(self) -> dict[str, Any]:
        """confluent-kafka / librdkafka configuration keys."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": self.security_protocol.lower(),
        }
        if self.uses_sasl:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = self.sasl_password.get_secret_value() if self.sasl_password else ""
        if self.uses_ssl:
            if self.ssl_ca_file:
                config["ssl.ca.location"] = str(self.ssl_ca_file)
            if self.ssl_cert_file:
                config["ssl.certificate.location"] = str(self.ssl_cert_file)
                config["ssl.key.location"] = str(self.ssl_key_file)
                if self.ssl_key_password:
                    config["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        return config

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.uses_ssl:
            return None
        context = ssl.create_default_context(cafile=str(self.ssl_ca_file) if self.ssl_ca_file else None)
        if self.ssl_cert_file:
            password = self.ssl_key_password.get_secret_value() if self.ssl_key_password else None
            context.load_cert_chain(str(self.ssl_cert_file), str(self.ssl_key_file), password=password)
        return context

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's consumer, producer and admin client."""
        kwargs: dict[str, Any] = {"bootstrap_servers": self.bootstrap, "security_protocol": self.security_protocol}
        if self.uses_sasl:
            kwargs.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                          sasl_plain_password=self.sasl_password.get_secret_value() if self.sasl_password else "")
        if self.uses_ssl:
            kwargs["ssl_context"] = self.ssl_context()
        return kwargs

    def faust_credentials(self) -> Any:
        """`broker_credentials` for faust.App (None for PLAINTEXT)."""
        import faust

        if self.uses_sasl:
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password.get_secret_value() if self.sasl_password else "",
                mechanism=self.sasl_mechanism,
                ssl_context=self.ssl_context(),
            )
        if self.uses_ssl:
            return faust.SSLCredentials(self.ssl_context())
        return None

    def auth_error(self, reason: str) -> KafkaAuthError | None:
        """Turn a client error text into a clear credentials error, or None when it is not about credentials.

        The text itself is not repeated: librdkafka's messages can echo a user name."""
        lowered = reason.lower()
        if self.uses_sasl and ("sasl" in lowered or "authenticat" in lowered):
            return KafkaAuthError(
                f"Kafka at {self.bootstrap} rejected the SASL login ({self.sasl_mechanism}): check "
                "APRO_KAFKA_SASL_USERNAME, APRO_KAFKA_SASL_PASSWORD and APRO_KAFKA_SASL_MECHANISM")
        if self.uses_ssl and ("ssl" in lowered or "certificate" in lowered or "handshake" in lowered):
            return KafkaAuthError(
                f"TLS with Kafka at {self.bootstrap} failed: check APRO_KAFKA_SSL_CA_FILE (and "
                "APRO_KAFKA_SSL_CERT_FILE / APRO_KAFKA_SSL_KEY_FILE if the broker wants a client certificate)")
        return None
