import dataclasses
import json
import subprocess
import sys

import pytest
import yaml

from k2actors.clients import kafka_settings, registry_settings
from k2actors.config import (
    _PARSERS,
    SECTIONS,
    CoinbaseConfig,
    Config,
    ConfigError,
    Endpoint,
    effective_config,
    load_config,
    venue_of,
)
from k2actors.outlets import producer_settings
from tests.conftest import REPO


def test_repo_config_yaml_states_the_built_in_defaults():
    assert load_config(REPO / "config.yaml") == Config()


def test_every_key_has_a_parser():
    keys = {(section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    assert keys == set(_PARSERS)


def test_every_key_is_in_the_repo_config_yaml_and_the_readme():
    stated = yaml.safe_load((REPO / "config.yaml").read_text())
    readme = (REPO / "README.md").read_text()
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.name in stated[section], f"{section}.{f.name} missing from config.yaml"
            assert f"`{section}.{f.name}`" in readme, f"{section}.{f.name} missing from README.md"


def test_secrets_come_from_the_environment_or_from_files(tmp_path):
    secret_file = tmp_path / "registry-password"
    secret_file.write_text("from-a-file\n")
    config = load_config(None, {
        "K2_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "K2_KAFKA_SASL_MECHANISM": "scram-sha-512",
        "K2_KAFKA_SASL_USERNAME": "k2",
        "K2_KAFKA_SASL_PASSWORD": "from-the-environment",
        "K2_KAFKA_SCHEMA_REGISTRY_USERNAME": "reader",
        "K2_KAFKA_SCHEMA_REGISTRY_PASSWORD_FILE": str(secret_file),
    })
    kafka = config.kafka
    assert (kafka.security_protocol, kafka.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (kafka.sasl_password, kafka.schema_registry_password) == ("from-the-environment", "from-a-file")
    assert "from-the-environment" not in repr(config) and "from-a-file" not in repr(config)
    printed = json.dumps(effective_config(config))
    assert "from-the-environment" not in printed and "from-a-file" not in printed
    assert effective_config(config)["kafka"]["sasl_password"] == "***"


def test_security_settings_reach_every_client(tmp_path):
    ca, certificate, key = (tmp_path / name for name in ("ca.pem", "client.pem", "client.key"))
    for path in (ca, certificate, key):
        path.write_text("PEM")
    config = load_config(None, {
        "K2_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "K2_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "K2_KAFKA_SASL_USERNAME": "k2", "K2_KAFKA_SASL_PASSWORD": "pw",
        "K2_KAFKA_SSL_CA_LOCATION": str(ca), "K2_KAFKA_SSL_CERTIFICATE_LOCATION": str(certificate),
        "K2_KAFKA_SSL_KEY_LOCATION": str(key), "K2_KAFKA_SSL_KEY_PASSWORD": "kpw",
        "K2_KAFKA_SCHEMA_REGISTRY_URL": "https://registry.example:8081",
        "K2_KAFKA_SCHEMA_REGISTRY_USERNAME": "reader", "K2_KAFKA_SCHEMA_REGISTRY_PASSWORD": "rpw",
        "K2_KAFKA_SCHEMA_REGISTRY_CA_LOCATION": str(ca),
    })
    settings = producer_settings(config.kafka)
    assert {k: settings[k] for k in ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password")} == {
        "security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "k2", "sasl.password": "pw"}
    assert (settings["ssl.ca.location"], settings["ssl.certificate.location"], settings["ssl.key.location"]) == (
        str(ca), str(certificate), str(key))
    assert settings["ssl.key.password"] == "kpw"
    assert registry_settings(config.kafka) == {
        "url": "https://registry.example:8081", "basic.auth.user.info": "reader:rpw", "ssl.ca.location": str(ca)}
    # The plain default adds nothing a plaintext broker would refuse.
    assert kafka_settings(Config().kafka) == {"bootstrap.servers": "localhost:9092", "security.protocol": "plaintext"}


def test_defaults_match_the_documented_deployment():
    config = Config()
    assert config.binance.websocket_url == Endpoint("wss://stream.binance.com:9443/stream", "BINANCE")
    assert [e.url for e in config.binance.failover_urls] == [
        "wss://stream.binance.com:443/stream",
        "wss://data-stream.binance.vision/stream",
    ]
    assert config.binance.symbols == ("BTCUSDT", "ETHUSDT", "BNBUSDT")
    assert config.kafka.dead_letter_topic == "market.crypto.trades.binance.dlq"
    assert (config.kafka.compression_type, config.kafka.enable_idempotence, config.kafka.acks) == ("lz4", True, "all")
    assert (config.kafka.batch_size, config.kafka.linger_ms, config.metrics.port) == (16384, 10, 9091)
    assert config.circuit_breaker.failure_threshold == 3


@pytest.mark.parametrize(
    "variable, text, section, key, expected",
    [
        ("K2_BINANCE_ENABLED", "false", "binance", "enabled", False),
        ("K2_BINANCE_WEBSOCKET_URL", "ws://localhost:9000/stream", "binance", "websocket_url",
         Endpoint("ws://localhost:9000/stream", "BINANCE")),
        ("K2_BINANCE_FAILOVER_URLS", "wss://a.example/stream,wss://stream.binance.us:9443/stream", "binance",
         "failover_urls", (Endpoint("wss://a.example/stream", "BINANCE"), Endpoint("wss://stream.binance.us:9443/stream", "BINANCEUS"))),
        ("K2_BINANCE_FAILOVER_URLS", '["wss://a.example/stream"]', "binance", "failover_urls",
         (Endpoint("wss://a.example/stream", "BINANCE"),)),
        ("K2_BINANCE_SYMBOLS", "btcusdt, ETHUSDT", "binance", "symbols", ("BTCUSDT", "ETHUSDT")),
        ("K2_BINANCE_SYMBOLS", '["SOLUSDT"]', "binance", "symbols", ("SOLUSDT",)),
        ("K2_BINANCE_STREAMS", "trade,bookTicker", "binance", "streams", ("trade", "bookTicker")),
        ("K2_BINANCE_MODE", "hot_standby", "binance", "mode", "hot_standby"),
        ("K2_KRAKEN_SYMBOLS", "btc/usd, ETH/EUR", "kraken", "symbols", ("BTC/USD", "ETH/EUR")),
        ("K2_KRAKEN_STREAMS", "trade,ticker,book", "kraken", "streams", ("trade", "ticker", "book")),
        ("K2_KRAKEN_BOOK_DEPTH", "5", "kraken", "book_depth", 5),
        ("K2_KRAKEN_BOOK_CADENCE_SECONDS", "0.5", "kraken", "book_cadence_seconds", 0.5),
        ("K2_KRAKEN_WEBSOCKET_URL", "wss://k.example/v2", "kraken", "websocket_url", Endpoint("wss://k.example/v2", "KRAKEN")),
        ("K2_KRAKEN_FAILOVER_URLS", "ws://a.example/v2,ws://b.example/v2", "kraken", "failover_urls",
         (Endpoint("ws://a.example/v2", "KRAKEN"), Endpoint("ws://b.example/v2", "KRAKEN"))),
        ("K2_KRAKEN_STALE_TIMEOUT_SECONDS", "7", "kraken", "stale_timeout_seconds", 7.0),
        ("K2_BINANCE_STALE_TIMEOUT_SECONDS", "12.5", "binance", "stale_timeout_seconds", 12.5),
        ("K2_BINANCE_RECONNECT_DELAY_SECONDS", "1", "binance", "reconnect_delay_seconds", 1.0),
        ("K2_BINANCE_MAX_CONNECTION_AGE_SECONDS", "3600", "binance", "max_connection_age_seconds", 3600.0),
        ("K2_BINANCE_REST_URLS", "binance=http://127.0.0.1:9000/", "binance", "rest_urls",
         {"BINANCE": "http://127.0.0.1:9000", "BINANCEUS": "https://api.binance.us"}),
        ("K2_BINANCE_REST_URLS", '{"BINANCEUS": "https://us.example"}', "binance", "rest_urls",
         {"BINANCE": "https://api.binance.com", "BINANCEUS": "https://us.example"}),
        ("K2_BINANCE_MAX_FRAME_BYTES", "4096", "binance", "max_frame_bytes", 4096),
        ("K2_KAFKA_MAX_BUFFERED_RECORDS", "5000", "kafka", "max_buffered_records", 5000),
        ("K2_CIRCUIT_BREAKER_EXIT_AFTER_OPEN_SECONDS", "60", "circuit_breaker", "exit_after_open_seconds", 60.0),
        ("K2_KAFKA_BOOTSTRAP_SERVERS", "kafka:29092", "kafka", "bootstrap_servers", "kafka:29092"),
        ("K2_KAFKA_SCHEMA_REGISTRY_URL", "http://schema-registry:8081", "kafka", "schema_registry_url", "http://schema-registry:8081"),
        ("K2_KAFKA_TOPIC", "my.trades", "kafka", "topic", "my.trades"),
        ("K2_KAFKA_DLQ_TOPIC", "my.dlq", "kafka", "dlq_topic", "my.dlq"),
        ("K2_METRICS_PORT", "9100", "metrics", "port", 9100),
        ("K2_LOG_LEVEL", "debug", "log", "level", "DEBUG"),
        ("K2_LOG_FORMAT", "json", "log", "format", "json"),
        ("K2_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "5", "circuit_breaker", "failure_threshold", 5),
        ("K2_COINBASE_ENABLED", "true", "coinbase", "enabled", True),
        ("K2_COINBASE_SYMBOLS", "btc-usd, ETH-EUR", "coinbase", "symbols", ("BTC-USD", "ETH-EUR")),
        ("K2_COINBASE_SYMBOLS", '["1INCH-USDC"]', "coinbase", "symbols", ("1INCH-USDC",)),
        ("K2_COINBASE_STREAMS", "market_trades,ticker", "coinbase", "streams", ("market_trades", "ticker")),
        ("K2_COINBASE_WEBSOCKET_URL", "ws://127.0.0.1:9100/", "coinbase", "websocket_url", Endpoint("ws://127.0.0.1:9100/", "COINBASE")),
        # every endpoint of the section is Coinbase's, whatever its host
        ("K2_COINBASE_FAILOVER_URLS", "wss://a.example/ws,wss://stream.binance.us:9443/stream", "coinbase", "failover_urls",
         (Endpoint("wss://a.example/ws", "COINBASE"), Endpoint("wss://stream.binance.us:9443/stream", "COINBASE"))),
        ("K2_COINBASE_REST_URL", "http://127.0.0.1:9101", "coinbase", "rest_url", "http://127.0.0.1:9101"),
        ("K2_COINBASE_BACKFILL", "off", "coinbase", "backfill", False),
        ("K2_COINBASE_STALE_TIMEOUT_SECONDS", "2", "coinbase", "stale_timeout_seconds", 2.0),
        ("K2_COINBASE_MODE", "HOT_STANDBY", "coinbase", "mode", "hot_standby"),
        ("K2_COINBASE_MAX_FRAME_BYTES", "2048", "coinbase", "max_frame_bytes", 2048),
        ("K2_KAFKA_COINBASE_TRADE_TOPIC", "cb.trades", "kafka", "coinbase_trade_topic", "cb.trades"),
        ("K2_KAFKA_COINBASE_QUOTE_TOPIC", "cb.quotes", "kafka", "coinbase_quote_topic", "cb.quotes"),
        ("K2_KAFKA_COINBASE_RAW_TOPIC", "cb.raw", "kafka", "coinbase_raw_topic", "cb.raw"),
    ],
)
def test_environment_overrides_the_documented_names(variable, text, section, key, expected):
    config = load_config(REPO / "config.yaml", {variable: text})
    assert getattr(getattr(config, section), key) == expected


def test_environment_wins_over_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("kafka:\n  topic: from.yaml\n")
    assert load_config(path, {}).kafka.topic == "from.yaml"
    assert load_config(path, {"K2_KAFKA_TOPIC": "from.env"}).kafka.topic == "from.env"


def test_yaml_endpoint_mapping_sets_the_venue(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("binance:\n  failover_urls:\n    - {url: 'wss://mirror.example/stream', venue: binanceus}\n")
    assert load_config(path).binance.failover_urls == (Endpoint("wss://mirror.example/stream", "BINANCEUS"),)


@pytest.mark.parametrize(
    "url, venue",
    [("wss://stream.binance.us:9443/stream", "BINANCEUS"), ("wss://binance.us/stream", "BINANCEUS"),
     ("wss://stream.binance.com:9443/stream", "BINANCE"), ("wss://notbinance.us.example/stream", "BINANCE"),
     ("ws://127.0.0.1:9000/stream", "BINANCE")],
)
def test_venue_follows_the_host(url, venue):
    assert venue_of(url) == venue


@pytest.mark.parametrize(
    "yaml_text, env, key, fragment",
    [
        ("binance:\n  colour: blue\n", {}, "binance.colour", "one of the keys"),
        ("kafkaa:\n  topic: x\n", {}, "kafkaa", "one of the sections"),
        ("metrics:\n  port: nine\n", {}, "metrics.port", "an integer"),
        ("metrics:\n  port: 70000\n", {}, "metrics.port", "at most 65535"),
        ("", {"K2_METRICS_PORT": "0"}, "metrics.port", "at least 1"),
        ("binance:\n  enabled: maybe\n", {}, "binance.enabled", "true or false"),
        ("binance:\n  websocket_url: http://stream.binance.com/stream\n", {}, "binance.websocket_url", "ws:// or wss://"),
        ("", {"K2_BINANCE_FAILOVER_URLS": "wss://ok.example/stream,ftp://bad"}, "binance.failover_urls[1]", "ws:// or wss://"),
        ("binance:\n  symbols: []\n", {}, "binance.symbols", "non-empty list"),
        ("", {"K2_BINANCE_SYMBOLS": ""}, "binance.symbols", "non-empty list"),
        ("binance:\n  symbols: [BTC-USDT]\n", {}, "binance.symbols", "letters or digits"),
        ("binance:\n  symbols: [BTCUSDT, btcusdt]\n", {}, "binance.symbols", "without repeated"),
        ("binance:\n  book_depth: 200\n  book_snapshot_limit: 100\n", {}, "binance.book_depth", "a book is only as deep as its snapshot"),
        ("", {"K2_BINANCE_BOOK_SNAPSHOT_LIMIT": "5001"}, "binance.book_snapshot_limit", "at most 5000"),
        ("", {"K2_BINANCE_STREAMS": "trade,depth"}, "binance.streams", "bookTicker, book"),
        ("", {"K2_BINANCE_SYMBOLS": "[not json"}, "binance.symbols", "JSON array"),
        ("binance:\n  mode: active_active\n", {}, "binance.mode", "failover, hot_standby"),
        ("kafka:\n  schema_registry_url: registry:8081\n", {}, "kafka.schema_registry_url", "http://"),
        ("binance:\n  rest_urls: {KRAKEN: 'https://x'}\n", {}, "binance.rest_urls.KRAKEN", "BINANCE, BINANCEUS"),
        ("", {"K2_BINANCE_REST_URLS": "BINANCE=ftp://x"}, "binance.rest_urls.BINANCE", "http://"),
        ("", {"K2_BINANCE_REST_URLS": "just-a-url"}, "binance.rest_urls", "VENUE=URL"),
        ("kafka:\n  max_buffered_records: 10\n", {}, "kafka.max_buffered_records", "at least 1000"),
        ("kafka:\n  topic: 'bad topic'\n", {}, "kafka.topic", "Kafka topic name"),
        ("log:\n  format: xml\n", {}, "log.format", "text, json"),
        ("", {"K2_KAFKA_BOOTSTRAP_SERVER": "x:1"}, "kafka.bootstrap_server", "one of the keys"),
        ("- a list\n", {}, "<root>", "mapping of sections"),
        ("binance: [\n", {}, "--config", "valid YAML"),
        ("", {"K2_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "K2_KAFKA_SASL_USERNAME": "k2"}, "kafka.sasl_password", "set when"),
        ("", {"K2_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "K2_KAFKA_SASL_PASSWORD": "x"}, "kafka.sasl_username", "set when"),
        ("", {"K2_KAFKA_SECURITY_PROTOCOL": "KERBEROS"}, "kafka.security_protocol", "SASL_SSL"),
        ("", {"K2_KAFKA_SASL_MECHANISM": "GSSAPI"}, "kafka.sasl_mechanism", "SCRAM-SHA-512"),
        ("", {"K2_KAFKA_SSL_CA_LOCATION": "/nonexistent/ca.pem"}, "kafka.ssl_ca_location", "existing file"),
        ("", {"K2_BINANCE_TLS_CA_FILE": "/nonexistent/ca.pem"}, "binance.tls_ca_file", "existing file"),
        ("", {"K2_KAFKA_SASL_PASSWORD_FILE": "/nonexistent/secret"}, "kafka.sasl_password_file", "existing file"),
        ("", {"K2_KAFKA_SASL_PASSWORD_FILE": "/etc/hostname", "K2_KAFKA_SASL_PASSWORD": "x"},
         "kafka.sasl_password_file", "one source per secret"),
        ("", {"K2_KAFKA_SCHEMA_REGISTRY_USERNAME": "reader"}, "kafka.schema_registry_password", "together with"),
        ("", {"K2_KAFKA_SSL_CERTIFICATE_LOCATION": "/etc/hostname"}, "kafka.ssl_key_location", "together with"),
        ("", {"K2_METRICS_BIND_ADDRESS": "localhost"}, "metrics.bind_address", "IP address"),
        ("", {"K2_BINANCE_TLS_VERIFY": "sometimes"}, "binance.tls_verify", "true or false"),
        ("", {"K2_BINANCE_STREAMS": "trade,depth"}, "binance.streams", "trade, aggTrade, bookTicker"),
        ("", {"K2_BINANCE_STREAMS": "trade,trade"}, "binance.streams", "without repeats"),
        ("binance:\n  streams: []\n", {}, "binance.streams", "non-empty"),
        ("", {"K2_KRAKEN_SYMBOLS": "BTCUSD"}, "kraken.symbols", "Kraken pairs in its v2 spelling, such as BTC/USD"),
        ("", {"K2_KRAKEN_SYMBOLS": "BTC/USD,btc/usd"}, "kraken.symbols", "without repeated"),
        ("", {"K2_KRAKEN_STREAMS": "trade,depth"}, "kraken.streams", "of trade, ticker, book"),
        ("", {"K2_KRAKEN_WEBSOCKET_URL": "https://ws.kraken.com/v2"}, "kraken.websocket_url", "ws:// or wss://"),
        ("kraken:\n  rest_url: api.kraken.com\n", {}, "kraken.rest_url", "http://"),
        ("kraken:\n  book_depth: 25\n", {}, "kraken.book_depth", "at most 10"),
        ("kraken:\n  book_snapshot_limit: 100\n", {}, "kraken.book_snapshot_limit", "one of the keys"),
        ("", {"K2_METRIC_PORT": "1"}, "K2_METRIC_PORT", "did you mean K2_METRICS_PORT?"),  # a misspelled section
        ("binance:\n  symbol: [BTCUSDT]\n", {}, "binance.symbol", "did you mean symbols?"),
        ("binanse:\n  symbols: [BTCUSDT]\n", {}, "binanse", "did you mean binance?"),
        ("", {"K2_COINBASE_SYMBOLS": "BTCUSD"}, "coinbase.symbols", "a non-empty list of Coinbase product ids, such as BTC-USD"),
        ("coinbase:\n  symbols: [BTC/USD]\n", {}, "coinbase.symbols", "Coinbase product ids, such as BTC-USD"),
        ("", {"K2_COINBASE_SYMBOLS": "BTC-PERP-INTX"}, "coinbase.symbols", "Coinbase product ids, such as BTC-USD"),
        ("coinbase:\n  symbols: [BTC-USD, 5]\n", {}, "coinbase.symbols", "Coinbase product ids, such as BTC-USD"),
        ("coinbase:\n  symbols: []\n", {}, "coinbase.symbols", "a non-empty list of Coinbase product ids"),
        ("", {"K2_COINBASE_SYMBOLS": "BTC-USD,btc-usd"}, "coinbase.symbols", "without repeated products"),
        ("", {"K2_COINBASE_STREAMS": "market_trades,matches"}, "coinbase.streams", "without repeats, of market_trades, ticker"),
        ("", {"K2_COINBASE_STREAMS": "ticker,ticker"}, "coinbase.streams", "without repeats"),
        ("", {"K2_COINBASE_WEBSOCKET_URL": "https://advanced-trade-ws.coinbase.com"}, "coinbase.websocket_url", "ws:// or wss://"),
        ("coinbase:\n  failover_urls: [wss://ok.example, ftp://bad]\n", {}, "coinbase.failover_urls[1]", "ws:// or wss://"),
        ("coinbase:\n  rest_url: api.exchange.coinbase.com\n", {}, "coinbase.rest_url", "http://"),
        # Coinbase's history is paged by id: no age to cut it at
        ("", {"K2_COINBASE_BACKFILL_MAX_AGE_SECONDS": "60"}, "coinbase.backfill_max_age_seconds", "one of the keys"),
        ("coinbase:\n  book_snapshot_limit: 100\n", {}, "coinbase.book_snapshot_limit", "one of the keys"),
        ("coinbase:\n  book_depth: 0\n", {}, "coinbase.book_depth", "at least 1"),
        ("", {"K2_COINBASE_SYMBOL": "BTC-USD"}, "coinbase.symbol", "did you mean symbols?"),
        ("", {"K2_KAFKA_COINBASE_TRADE_TOPIC": "coinbase trades"}, "kafka.coinbase_trade_topic", "Kafka topic name"),
    ],
)
def test_invalid_values_name_key_value_and_expectation(tmp_path, yaml_text, env, key, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env)
    assert caught.value.key == key
    assert key in str(caught.value) and fragment in str(caught.value)


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "k2actors", *args], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})}, cwd=REPO,
    )


@pytest.mark.parametrize("env, key, fragment", [
    ({"K2_COINBASE_SYMBOLS": "BTC-USD,BTC/USD"}, "coinbase.symbols", "Coinbase product ids"),
    ({"K2_COINBASE_BACKFILL_MAX_AGE_SECONDS": "60"}, "coinbase.backfill_max_age_seconds", "one of the keys"),
])
def test_a_bad_coinbase_key_exits_2_naming_it(env, key, fragment):
    result = run_cli("validate-config", env=env)
    assert result.returncode == 2 and key in result.stderr and fragment in result.stderr and result.stdout == ""


@pytest.mark.parametrize("command", ["start", "validate-config", "demo", "tail"])
def test_bad_config_exits_2_naming_the_key_and_starts_nothing(command):
    result = run_cli(command, env={"K2_BINANCE_WEBSOCKET_URL": "https://example.com/stream"})
    assert result.returncode == 2
    assert "binance.websocket_url" in result.stderr and "ws:// or wss://" in result.stderr
    assert result.stdout == ""


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("binance:\n  symbols: [BTCUSDT\n")
    result = run_cli("validate-config", "--config", str(path))
    assert result.returncode == 2 and f'in "{path}", line 2' in result.stderr and "<unicode string>" not in result.stderr


def test_missing_config_file_exits_2(tmp_path):
    result = run_cli("validate-config", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2 and "absent.yaml" in result.stderr


def test_validate_config_prints_the_effective_config_with_credentials_redacted():
    result = run_cli(
        "validate-config", "--config", "config.yaml",
        env={"K2_KAFKA_SCHEMA_REGISTRY_URL": "https://user:s3cret@registry.example:8081", "K2_BINANCE_SYMBOLS": "SOLUSDT"},
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["binance"]["symbols"] == ["SOLUSDT"]
    assert printed["kafka"]["schema_registry_url"] == "https://***@registry.example:8081"
    assert "s3cret" not in result.stdout


def test_effective_config_is_plain_data():
    assert json.loads(json.dumps(effective_config(Config())))["metrics"] == {"port": 9091, "bind_address": "0.0.0.0"}


@pytest.mark.parametrize("args", [["--help"], ["start", "--help"], ["validate-config", "--help"], ["demo", "--help"], ["tail", "--help"]])
def test_every_command_has_help(args):
    result = run_cli(*args)
    assert result.returncode == 0 and "usage:" in result.stdout


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("k2actors ")


def test_the_symbols_records_carry_are_every_enabled_venues_each_once(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("binance:\n  symbols: [BTCUSDT, BTCUSD]\nkraken:\n  enabled: true\n  symbols: [BTC/USD, ETH/EUR]\n")
    config = load_config(path, {})
    assert config.record_symbols == ("BTCUSDT", "BTCUSD", "ETHEUR")  # Binance.US's BTCUSD and Kraken's BTC/USD are one
    assert config.venue_symbols(config.kraken, ("BTCUSD", "BTCUSDT")) == ("BTC/USD",)
    assert config.venue_symbols(config.binance, ("ETHEUR", "BTCUSDT")) == ("BTCUSDT",)
    assert load_config(path, {"K2_BINANCE_ENABLED": "false"}).record_symbols == ("BTCUSD", "ETHEUR")


def test_the_coinbase_section_from_yaml_the_environment_winning(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "coinbase:\n  enabled: true\n  websocket_url: wss://cb.example/ws\n  failover_urls: [wss://cb2.example/ws]\n"
        "  symbols: [btc-usd, ETH-EUR]\n  streams: [ticker, market_trades]\n  rest_url: https://rest.example\n"
        "  backfill: false\n  stale_timeout_seconds: 5\n  reconnect_delay_seconds: 0.5\n  max_frame_bytes: 2097152\n"
        "kafka:\n  coinbase_trade_topic: cb.trades\n  coinbase_quote_topic: cb.quotes\n  coinbase_raw_topic: cb.raw\n")
    config = load_config(path, {})
    assert config.coinbase == CoinbaseConfig(
        enabled=True, websocket_url=Endpoint("wss://cb.example/ws", "COINBASE"),
        failover_urls=(Endpoint("wss://cb2.example/ws", "COINBASE"),),
        symbols=("BTC-USD", "ETH-EUR"), streams=("ticker", "market_trades"), rest_url="https://rest.example", backfill=False,
        stale_timeout_seconds=5.0, reconnect_delay_seconds=0.5, max_frame_bytes=2097152)
    assert config.coinbase.stream_types == ("coinbase.ticker", "coinbase.trade")
    assert {stream: config.kafka.topic_for(stream) for stream in ("coinbase.trade", "coinbase.ticker", "coinbase.raw")} == {
        "coinbase.trade": "cb.trades", "coinbase.ticker": "cb.quotes", "coinbase.raw": "cb.raw"}
    assert load_config(path, {"K2_COINBASE_SYMBOLS": "SOL-USD"}).coinbase.symbols == ("SOL-USD",)
    # Coinbase is off unless enabled, and its topics are named by default
    default = Config()
    assert not default.coinbase.enabled and default.coinbase not in default.venues
    assert {stream: default.kafka.topic_for(stream) for stream in ("coinbase.trade", "coinbase.ticker", "coinbase.raw")} == {
        "coinbase.trade": "market.crypto.trades.coinbase", "coinbase.ticker": "market.crypto.quotes.coinbase",
        "coinbase.raw": "market.crypto.raw.coinbase"}


def test_with_all_three_venues_their_symbols_streams_and_endpoints(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("binance:\n  symbols: [BTCUSDT, BTCUSD]\n  streams: [trade, bookTicker]\n"
                    "kraken:\n  enabled: true\n  symbols: [BTC/USD, ETH/EUR]\n  streams: [trade, ticker]\n"
                    "coinbase:\n  enabled: true\n  symbols: [BTC-USD, ETH-EUR, SOL-USD]\n  streams: [market_trades, ticker]\n")
    config = load_config(path, {})
    assert config.venues == (config.binance, config.kraken, config.coinbase)
    # Binance.US's BTCUSD, Kraken's BTC/USD and Coinbase's BTC-USD are one symbol, as are ETH/EUR and ETH-EUR
    assert config.record_symbols == ("BTCUSDT", "BTCUSD", "ETHEUR", "SOLUSD")
    assert config.venue_symbols(config.coinbase, ("SOLUSD", "BTCUSD", "ETHUSDT")) == ("BTC-USD", "SOL-USD")
    assert config.venue_symbols(config.kraken, ("SOLUSD", "BTCUSD")) == ("BTC/USD",)
    assert config.venue_symbols(config.binance, ("SOLUSD", "BTCUSD")) == ("BTCUSD",)
    assert config.venue_of(Endpoint("wss://advanced-trade-ws.coinbase.com", "COINBASE")) is config.coinbase
    assert config.venue_of(config.kraken.websocket_url) is config.kraken
    assert config.venue_of(Endpoint("wss://stream.binance.us:9443/stream", "BINANCEUS")) is config.binance
    assert config.stream_types == ("trade", "bookTicker", "raw", "kraken.trade", "kraken.ticker", "kraken.raw",
                                   "coinbase.trade", "coinbase.ticker", "coinbase.raw")
    assert load_config(path, {"K2_RAW_ENABLED": "false"}).stream_types == (
        "trade", "bookTicker", "kraken.trade", "kraken.ticker", "coinbase.trade", "coinbase.ticker")
    without = load_config(path, {"K2_COINBASE_ENABLED": "false"})
    assert without.record_symbols == ("BTCUSDT", "BTCUSD", "ETHEUR") and "coinbase.trade" not in without.stream_types
    alone = load_config(path, {"K2_BINANCE_ENABLED": "false", "K2_KRAKEN_ENABLED": "false"})
    assert alone.venues == (alone.coinbase,) and alone.record_symbols == ("BTCUSD", "ETHEUR", "SOLUSD")
    assert alone.stream_types == ("trade", "bookTicker", "raw", "coinbase.trade", "coinbase.ticker", "coinbase.raw")
