"""How every client the service opens is configured: Kafka (librdkafka), the Schema Registry,
and TLS towards the exchange. One place, so that a security setting reaches every client."""

from __future__ import annotations

import ssl

import certifi

from k2actors.config import KafkaConfig


def kafka_settings(kafka: KafkaConfig) -> dict:
    """librdkafka settings shared by the producer, the admin client and consumers."""
    settings = {"bootstrap.servers": kafka.bootstrap_servers, "security.protocol": kafka.security_protocol.lower()}
    if kafka.security_protocol.startswith("SASL_"):
        settings.update({
            "sasl.mechanism": kafka.sasl_mechanism,
            "sasl.username": kafka.sasl_username,
            "sasl.password": str(kafka.sasl_password),
        })
    optional = {
        "ssl.ca.location": kafka.ssl_ca_location,
        "ssl.certificate.location": kafka.ssl_certificate_location,
        "ssl.key.location": kafka.ssl_key_location,
        "ssl.key.password": str(kafka.ssl_key_password),
    }
    settings.update({name: value for name, value in optional.items() if value})
    return settings


def registry_settings(kafka: KafkaConfig) -> dict:
    """confluent-kafka SchemaRegistryClient settings."""
    settings = {"url": kafka.schema_registry_url}
    if kafka.schema_registry_username:
        settings["basic.auth.user.info"] = f"{kafka.schema_registry_username}:{kafka.schema_registry_password}"
    optional = {
        "ssl.ca.location": kafka.schema_registry_ca_location,
        "ssl.certificate.location": kafka.schema_registry_certificate_location,
        "ssl.key.location": kafka.schema_registry_key_location,
    }
    settings.update({name: value for name, value in optional.items() if value})
    return settings


def exchange_tls(ca_file: str, verify: bool) -> ssl.SSLContext:
    """TLS for wss:// streams and https:// REST (binance.tls_ca_file, binance.tls_verify):
    certifi's current bundle, not whatever the image's OS shipped, plus the configured CA
    file; verification off only when asked."""
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
