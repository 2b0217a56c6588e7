"""TLS towards the exchange, a secured Schema Registry, Kafka security settings, the metrics
bind address, and secrets kept out of every log line: the service as a process against a
TLS simulator and a registry with basic auth over TLS. Certificates come from a test CA."""

import json
import ssl
import subprocess
import sys

import pytest
import trustme
from confluent_kafka import KafkaException, Producer

from k2actors.localstack.registry import SchemaRegistryDouble
from k2actors.localstack.simulator import ExchangeSimulator
from tests.conftest import REPO, http_get, wait_until

SASL_SECRET = "sasl-secret-7f3a"
REGISTRY_SECRET = "registry-secret-91c2"


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca, tmp_path_factory):
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_tls(ca) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def simulator(ca):
    """This module's exchange speaks wss:// and https:// with a certificate of the test CA."""
    with ExchangeSimulator(rate=50, endpoints=2, tls=server_tls(ca)) as running:
        yield running


@pytest.fixture
def secured_registry(ca):
    with SchemaRegistryDouble(credentials=("k2", REGISTRY_SECRET), tls=server_tls(ca)) as running:
        yield running


def produced(service) -> float:
    return service.metric("k2_kafka_messages_produced_total")


def test_wss_and_https_verified_against_a_custom_ca(start_service, simulator, ca_file):
    assert simulator.urls[0].startswith("wss://")
    service = start_service(K2_BINANCE_TLS_CA_FILE=ca_file)
    service.wait_ready()
    wait_until(lambda: produced(service) >= 50, 60, "trades over wss://")
    assert service.stop() == 0
    log = service.log()
    assert "exchangeInfo from BINANCE: quote assets of 3 symbols" in log  # https:// REST verified too
    assert "NOT verified" not in log


def test_a_certificate_no_trusted_ca_signed_is_refused(start_service):
    service = start_service()  # certifi's bundle only: the test CA is unknown to it
    wait_until(lambda: "connect failed: SSLCertVerificationError" in service.log(), 30, "the stream's certificate refused")
    wait_until(lambda: service.get("/ready")[0] == 503, 30, "/ready to answer 503")
    assert produced(service) == 0
    assert "exchangeInfo from BINANCE unavailable" in service.log() and "CERTIFICATE_VERIFY_FAILED" in service.log()


def test_verification_off_connects_and_warns_at_start(start_service):
    service = start_service(K2_BINANCE_TLS_VERIFY="false")
    service.wait_ready()
    wait_until(lambda: produced(service) >= 10, 60, "trades without verification")
    assert service.stop() == 0
    assert "binance.tls_verify is false: exchange certificates are NOT verified" in service.log()


def test_schema_registry_with_basic_auth_over_tls(start_service, secured_registry, ca_file, tmp_path):
    password_file = tmp_path / "registry-password"
    password_file.write_text(REGISTRY_SECRET + "\n")
    service = start_service(
        K2_BINANCE_TLS_CA_FILE=ca_file,
        K2_KAFKA_SCHEMA_REGISTRY_URL=secured_registry.url,
        K2_KAFKA_SCHEMA_REGISTRY_USERNAME="k2",
        K2_KAFKA_SCHEMA_REGISTRY_PASSWORD_FILE=str(password_file),
        K2_KAFKA_SCHEMA_REGISTRY_CA_LOCATION=ca_file,
    )
    service.wait_ready()
    wait_until(lambda: produced(service) >= 20, 60, "trades with a secured registry")
    assert service.stop() == 0
    assert secured_registry.store.subjects() == [f"{service.topic}-value", f"{service.topic}.raw-value"]
    assert REGISTRY_SECRET not in service.log()


def test_a_wrong_registry_password_is_retried_loudly_and_never_logged(start_service, secured_registry, ca_file):
    service = start_service(
        K2_BINANCE_TLS_CA_FILE=ca_file,
        K2_KAFKA_SCHEMA_REGISTRY_URL=secured_registry.url,
        K2_KAFKA_SCHEMA_REGISTRY_USERNAME="k2",
        K2_KAFKA_SCHEMA_REGISTRY_PASSWORD="wrong-" + REGISTRY_SECRET,
        K2_KAFKA_SCHEMA_REGISTRY_CA_LOCATION=ca_file,
    )
    wait_until(lambda: "Unauthorized" in service.log(), 30, "the registry's refusal logged")
    wait_until(lambda: service.get("/ready")[0] == 503, 30, "/ready to answer 503")
    assert produced(service) == 0
    assert secured_registry.store.subjects() == []
    assert service.stop() == 1  # trades were received that never reached Kafka, and it says so
    assert "records undelivered" in service.log()
    assert REGISTRY_SECRET not in service.log()


def test_kafka_sasl_settings_reach_the_broker_and_the_password_no_log_line(start_service, broker, ca_file, tmp_path):
    """The local broker speaks SCRAM's handshake but cannot authenticate (Tansu 0.6), so this
    proves the settings reach librdkafka and the broker, and that the failure is loud and
    the password nowhere: not in the JSON log at DEBUG, not in validate-config."""
    password_file = tmp_path / "kafka-password"
    password_file.write_text(SASL_SECRET)
    sasl = {
        "K2_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "K2_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "K2_KAFKA_SASL_USERNAME": "k2",
        "K2_KAFKA_SASL_PASSWORD_FILE": str(password_file),
    }
    service = start_service(K2_BINANCE_TLS_CA_FILE=ca_file, K2_LOG_LEVEL="DEBUG", K2_LOG_FORMAT="json", **sasl)
    wait_until(lambda: "SCRAM-SHA-512" in service.log(), 30, "the SASL handshake failure logged")
    wait_until(lambda: service.get("/ready")[0] == 503, 30, "/ready to answer 503")
    url = service.env["K2_BINANCE_WEBSOCKET_URL"]
    wait_until(lambda: service.metrics().get(f'k2_binance_connection_status{{url="{url}"}}') == 1, 30, "trades arriving over TLS")
    assert service.stop() == 1  # what was received could not be delivered, and the exit status says so
    lines = [json.loads(line) for line in service.log().splitlines()]  # every line is JSON, librdkafka's too
    # librdkafka's reason, once per attempt, in the producer's setup line (not its twenty retries a second)
    assert any(line["event"] == "kafka_setup_failed" and "SCRAM-SHA-512" in line["message"] for line in lines)
    assert SASL_SECRET not in service.log()

    validated = subprocess.run(
        [sys.executable, "-m", "k2actors", "validate-config"], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", **sasl, "K2_KAFKA_SCHEMA_REGISTRY_PASSWORD": REGISTRY_SECRET,
             "K2_KAFKA_SCHEMA_REGISTRY_USERNAME": "k2"}, cwd=REPO,
    )
    assert validated.returncode == 0, validated.stderr
    assert json.loads(validated.stdout)["kafka"]["sasl_password"] == "***"
    assert SASL_SECRET not in validated.stdout + validated.stderr
    assert REGISTRY_SECRET not in validated.stdout + validated.stderr


def test_librdkafka_accepts_every_security_setting_the_config_can_produce(ca_file, tmp_path, ca):
    """mTLS and SASL_SSL settings as the service builds them: librdkafka loads the files and
    takes every key (an unknown key or unreadable file fails at construction)."""
    from k2actors.config import load_config
    from k2actors.outlets import producer_settings

    client = ca.issue_cert("k2actors-client")
    certificate, key = tmp_path / "client.pem", tmp_path / "client.key"
    client.cert_chain_pems[0].write_to_path(str(certificate))
    client.private_key_pem.write_to_path(str(key))
    for protocol, mechanism in (("SSL", "PLAIN"), ("SASL_SSL", "SCRAM-SHA-256"), ("SASL_SSL", "PLAIN")):
        config = load_config(None, {
            "K2_KAFKA_SECURITY_PROTOCOL": protocol, "K2_KAFKA_SASL_MECHANISM": mechanism,
            "K2_KAFKA_SASL_USERNAME": "k2", "K2_KAFKA_SASL_PASSWORD": SASL_SECRET,
            "K2_KAFKA_SSL_CA_LOCATION": ca_file, "K2_KAFKA_SSL_CERTIFICATE_LOCATION": str(certificate),
            "K2_KAFKA_SSL_KEY_LOCATION": str(key),
        })
        settings = producer_settings(config.kafka)
        assert Producer(settings).flush(0) == 0
        with pytest.raises(KafkaException, match="ssl.key.location|key"):  # librdkafka does read the files it is given
            Producer({**settings, "ssl.key.location": str(tmp_path / "missing.key")})


def test_metrics_listen_only_on_the_bind_address(start_service):
    service = start_service(K2_METRICS_BIND_ADDRESS="127.0.0.2", K2_BINANCE_TLS_VERIFY="false")
    port = service.metrics_port
    wait_until(lambda: http_get(f"http://127.0.0.2:{port}/health")[0] == 200, 30, "/health on 127.0.0.2")
    assert http_get(f"http://127.0.0.1:{port}/health")[0] == 0  # refused
    healthcheck = subprocess.run(
        [sys.executable, "-m", "k2actors.healthcheck"], capture_output=True, timeout=30, cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "K2_METRICS_PORT": str(port), "K2_METRICS_BIND_ADDRESS": "127.0.0.2"},
    )
    assert healthcheck.returncode == 0, healthcheck.stderr
    assert service.stop() == 0
