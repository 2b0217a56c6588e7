"""Typed configuration: YAML file, then `K2_<SECTION>_<KEY>` environment overrides.

The dataclass defaults are the documented defaults (the repository's config.yaml
states the same values, and a test keeps the two equal). Loading happens once, in
the command-line shell; actors receive the resulting frozen objects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from k2actors.core import coinbase, kraken
from k2actors.core.binance import MAX_DEPTH_LIMIT, SUBSCRIBABLE, TRADE
from k2actors.core.coinbase import Product
from k2actors.core.ledger import CoinbaseRules
from k2actors.core.raw import RAW
from k2actors.core.streams import STREAM_TYPES

VENUES = ("BINANCE", "BINANCEUS")  # Binance's: an endpoint of the binance section is one or the other
# The channels kraken.streams takes.
KRAKEN_STREAMS = (kraken.TRADE, kraken.TICKER, kraken.BOOK)
KRAKEN_SYMBOL_PATTERN = re.compile(r"^[A-Z0-9]{1,16}/[A-Z0-9]{1,16}$")
COINBASE_PRODUCT_PATTERN = re.compile(r"^[A-Z0-9]{1,16}-[A-Z0-9]{1,16}$")
MODES = ("failover", "hot_standby")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
SYMBOL_PATTERN = re.compile(r"^[A-Z0-9]{2,20}$")


class Secret(str):
    """A credential: the value itself where a client needs it, `***` wherever it is shown."""

    def __repr__(self) -> str:
        return "'***'" if self else "''"


# The exit status of a service or command whose configuration is not valid.
EXIT_CONFIG_ERROR = 2


class ConfigError(Exception):
    """An invalid configuration value; the message names key, value and expectation."""

    def __init__(self, key: str, value: Any, expected: str):
        self.key = key
        super().__init__(f"invalid config: {key} = {value!r}: expected {expected}")


@dataclass(frozen=True)
class Endpoint:
    url: str
    venue: str


# How far back backfill reaches by default: a day.
BACKFILL_MAX_AGE_SECONDS = 86400.0


@dataclass(frozen=True)
class VenueConfig:
    """What every venue's section holds; each section sets its own defaults."""

    enabled: bool
    websocket_url: Endpoint
    failover_urls: tuple[Endpoint, ...]
    symbols: tuple[str, ...]  # in the venue's spelling
    streams: tuple[str, ...]  # in the venue's words
    mode: str = "failover"
    stale_timeout_seconds: float = 30.0
    reconnect_delay_seconds: float = 5.0
    reconnect_max_delay_seconds: float = 60.0
    max_connection_age_seconds: float = 82800.0  # Binance closes a connection at 24 h
    max_frame_bytes: int = 65536  # a trade frame is about 250 bytes
    # Fill declared gaps from the venue's REST trade history.
    backfill: bool = True
    # wss:// and https:// are verified against certifi's CA bundle, plus this PEM file if set.
    tls_ca_file: str = ""
    tls_verify: bool = True
    # The book stream: each symbol's best book_depth levels a side, published once every
    # book_cadence_seconds of the venue's time.
    book_depth: int = 20
    book_cadence_seconds: float = 1.0

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return (self.websocket_url, *self.failover_urls)


@dataclass(frozen=True)
class BinanceConfig(VenueConfig):
    enabled: bool = True
    websocket_url: Endpoint = Endpoint("wss://stream.binance.com:9443/stream", "BINANCE")
    failover_urls: tuple[Endpoint, ...] = (
        Endpoint("wss://stream.binance.com:443/stream", "BINANCE"),
        Endpoint("wss://data-stream.binance.vision/stream", "BINANCE"),
    )
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
    streams: tuple[str, ...] = (TRADE,)  # any of SUBSCRIBABLE
    # How far back backfill reaches; missing ids older than this are reported, not fetched.
    backfill_max_age_seconds: float = BACKFILL_MAX_AGE_SECONDS
    # Books are rebuilt from REST snapshots of book_snapshot_limit levels a side (its request
    # weight: 5 up to 100, 25 to 500, 50 to 1000).
    book_snapshot_limit: int = 1000
    # REST base URL per venue: exchangeInfo (each symbol's quote asset) and trade history.
    rest_urls: dict[str, str] = field(
        default_factory=lambda: {"BINANCE": "https://api.binance.com", "BINANCEUS": "https://api.binance.us"}
    )


@dataclass(frozen=True)
class KrakenConfig(VenueConfig):
    enabled: bool = False
    websocket_url: Endpoint = Endpoint("wss://ws.kraken.com/v2", kraken.VENUE)
    failover_urls: tuple[Endpoint, ...] = ()
    symbols: tuple[str, ...] = ("BTC/USD", "ETH/USD", "SOL/USD")  # Kraken's v2 spelling
    streams: tuple[str, ...] = (kraken.TRADE,)  # any of KRAKEN_STREAMS
    backfill_max_age_seconds: float = BACKFILL_MAX_AGE_SECONDS  # Kraken's history is served by time: how far back
    # Its frames carry up to 1000 trades or book levels: larger than Binance's.
    max_frame_bytes: int = 1048576
    # REST base URL: trade history for gaps.
    rest_url: str = "https://api.kraken.com"
    # Kraken's checksum vouches for the best 10 levels a side: no deeper book is published.
    book_depth: int = kraken.CHECKSUM_LEVELS

    @property
    def stream_types(self) -> tuple[str, ...]:
        return tuple(kraken.STREAM_OF_CHANNEL[channel] for channel in self.streams)


@dataclass(frozen=True)
class CoinbaseConfig(VenueConfig):
    enabled: bool = False
    websocket_url: Endpoint = Endpoint("wss://advanced-trade-ws.coinbase.com", coinbase.VENUE)
    failover_urls: tuple[Endpoint, ...] = ()
    symbols: tuple[str, ...] = ("BTC-USD", "ETH-USD", "SOL-USD")  # Coinbase's product ids
    streams: tuple[str, ...] = (coinbase.MARKET_TRADES,)  # any of coinbase.SUBSCRIBABLE
    # (No backfill_max_age_seconds: Coinbase's history is paged by trade id, which says nothing
    # of a trade's age, so a gap is asked for however old.)
    # A level2 snapshot is the whole book: more than 4 MiB for BTC-USD. (The raw topic takes
    # records of up to 16 MiB, see outlets.RAW_MAX_MESSAGE_BYTES.)
    max_frame_bytes: int = 16 * 1024 * 1024
    # REST base URL: trade history for gaps (Coinbase Exchange's, which pages by trade id).
    rest_url: str = "https://api.exchange.coinbase.com"

    @property
    def stream_types(self) -> tuple[str, ...]:
        return tuple(coinbase.STREAM_OF_CHANNEL[channel] for channel in self.streams)


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = "localhost:9092"
    schema_registry_url: str = "http://localhost:8081"
    topic: str = "market.crypto.trades.binance"
    aggtrade_topic: str = "market.crypto.aggtrades.binance"
    quote_topic: str = "market.crypto.quotes.binance"
    book_topic: str = "market.crypto.books.binance"
    raw_topic: str = "market.crypto.raw.binance"
    kraken_trade_topic: str = "market.crypto.trades.kraken"
    kraken_quote_topic: str = "market.crypto.quotes.kraken"
    kraken_book_topic: str = "market.crypto.books.kraken"
    kraken_raw_topic: str = "market.crypto.raw.kraken"
    coinbase_trade_topic: str = "market.crypto.trades.coinbase"
    coinbase_quote_topic: str = "market.crypto.quotes.coinbase"
    coinbase_book_topic: str = "market.crypto.books.coinbase"
    coinbase_raw_topic: str = "market.crypto.raw.coinbase"
    dlq_topic: str = ""
    create_topics: bool = True
    topic_partitions: int = 3
    compression_type: str = "lz4"
    enable_idempotence: bool = True
    acks: str = "all"
    batch_size: int = 16384
    linger_ms: int = 10
    max_buffered_records: int = 100000
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: Secret = Secret("")
    ssl_ca_location: str = ""
    ssl_certificate_location: str = ""
    ssl_key_location: str = ""
    ssl_key_password: Secret = Secret("")
    schema_registry_username: str = ""
    schema_registry_password: Secret = Secret("")
    schema_registry_ca_location: str = ""
    schema_registry_certificate_location: str = ""
    schema_registry_key_location: str = ""

    @property
    def dead_letter_topic(self) -> str:
        return self.dlq_topic or f"{self.topic}.dlq"

    @property
    def state_topic(self) -> str:
        """Checkpoints of what each stream's topic holds, read on start to resume (compacted)."""
        return f"{self.topic}.state"

    def topic_for(self, stream: str) -> str:
        return str(getattr(self, STREAM_TYPES[stream].topic_key))


@dataclass(frozen=True)
class RawConfig:
    enabled: bool = True  # every frame received, byte for byte, to kafka.raw_topic
    # Each connection's count of frames received (k2actors.receipts): what a killed service
    # lost is counted from it at the next start. /var/tmp outlives a reboot and a container's
    # restart, and any user may write there.
    receipts_dir: str = "/var/tmp/k2actors/receipts"


@dataclass(frozen=True)
class CircuitBreakerConfig:
    failure_threshold: int = 3
    reset_timeout_seconds: float = 30.0
    exit_after_open_seconds: float = 300.0


@dataclass(frozen=True)
class MetricsConfig:
    port: int = 9091
    bind_address: str = "0.0.0.0"


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"
    format: str = "text"


@dataclass(frozen=True)
class ClusterConfig:
    enabled: bool = False
    group_id: str = "k2actors"
    # An instance that stops answering Kafka's group coordinator for this long loses its shards.
    session_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class Config:
    binance: BinanceConfig = field(default_factory=BinanceConfig)
    kraken: KrakenConfig = field(default_factory=KrakenConfig)
    coinbase: CoinbaseConfig = field(default_factory=CoinbaseConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    raw: RawConfig = field(default_factory=RawConfig)
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def venues(self) -> tuple[VenueConfig, ...]:
        """The sections of the venues to connect to."""
        return tuple(venue for venue in (self.binance, self.kraken, self.coinbase) if venue.enabled)

    @property
    def record_symbols(self) -> tuple[str, ...]:
        """The symbols the records of every enabled venue carry, each once (a Binance.US
        BTCUSD, Kraken's BTC/USD and Coinbase's BTC-USD are one): what cluster mode shards,
        and the connections carry those of the shards an instance owns."""
        return tuple(dict.fromkeys(symbol for venue in self.venues for symbol in map(self._record_symbol(venue), venue.symbols)))

    def _record_symbol(self, venue: VenueConfig) -> Callable[[str], str]:
        """How the venue's spelling of a symbol becomes its records'."""
        if venue is self.kraken:
            return kraken.record_symbol
        return coinbase.record_symbol if venue is self.coinbase else str

    def venue_symbols(self, venue: VenueConfig, carried: Iterable[str]) -> tuple[str, ...]:
        """The venue's symbols, in its spelling, whose records carry one of `carried`."""
        wanted, record_symbol = frozenset(carried), self._record_symbol(venue)
        return tuple(symbol for symbol in venue.symbols if record_symbol(symbol) in wanted)

    def venue_of(self, endpoint: Endpoint) -> VenueConfig:
        """The section an endpoint is configured in."""
        return {kraken.VENUE: self.kraken, coinbase.VENUE: self.coinbase}.get(endpoint.venue, self.binance)

    @property
    def stream_types(self) -> tuple[str, ...]:
        """Every stream type the service publishes, each to its topic: Binance's (whose topics
        are prepared whether or not it is enabled, as they always were), then Kraken's and
        Coinbase's when enabled."""
        binance = (*self.binance.streams, RAW) if self.raw.enabled else self.binance.streams
        others = ((venue.stream_types, raw) for venue, raw in ((self.kraken, kraken.RAW_STREAM), (self.coinbase, coinbase.RAW_STREAM))
                  if venue.enabled)
        return (*binance, *(stream for streams, raw in others for stream in (*streams, *((raw,) if self.raw.enabled else ()))))


def coinbase_rules(section: CoinbaseConfig, described: tuple[Product, ...]) -> CoinbaseRules:
    """What the ledger and replay make Coinbase's records with, given its products as last described."""
    return CoinbaseRules(frozenset(section.symbols), section.max_frame_bytes, described, coinbase.LEVEL2 in section.streams,
                         section.book_depth, round(section.book_cadence_seconds * 1000))


SECTIONS: dict[str, type] = {
    "binance": BinanceConfig,
    "kraken": KrakenConfig,
    "coinbase": CoinbaseConfig,
    "kafka": KafkaConfig,
    "raw": RawConfig,
    "circuit_breaker": CircuitBreakerConfig,
    "metrics": MetricsConfig,
    "log": LogConfig,
    "cluster": ClusterConfig,
}


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build the effective Config: defaults, then the YAML file, then the environment."""
    raw: dict[str, dict[str, Any]] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    for key, text in _environment_overrides(environ or {}):
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = _EnvText(text)
    config = Config(**{section: _build_section(section, values) for section, values in raw.items()})
    _check_together(config)
    return config


# Secrets may also be given as `<key>_file`: a path whose content is the secret (Docker and
# Kubernetes secrets are files), so that they need be neither in the YAML nor in the environment.
SECRET_FILE_SUFFIX = "_file"


def _check_together(config: Config) -> None:
    """Rules that span keys."""
    binance = config.binance
    if binance.book_depth > binance.book_snapshot_limit:
        raise ConfigError("binance.book_depth", binance.book_depth,
                          f"at most binance.book_snapshot_limit ({binance.book_snapshot_limit}): a book is only as deep as its snapshot")
    kafka = config.kafka
    if kafka.security_protocol.startswith("SASL_"):
        for name in ("sasl_username", "sasl_password"):
            if not getattr(kafka, name):
                raise ConfigError(f"kafka.{name}", "", f"set when kafka.security_protocol is {kafka.security_protocol}")
    for section, certificate, key in (
        ("kafka", "ssl_certificate_location", "ssl_key_location"),
        ("kafka", "schema_registry_certificate_location", "schema_registry_key_location"),
    ):
        if bool(getattr(kafka, certificate)) != bool(getattr(kafka, key)):
            raise ConfigError(f"{section}.{key}", getattr(kafka, key), f"set together with {section}.{certificate}")
    if bool(kafka.schema_registry_username) != bool(kafka.schema_registry_password):
        raise ConfigError("kafka.schema_registry_password", kafka.schema_registry_password,
                          "set together with kafka.schema_registry_username")


def effective_config(config: Config) -> dict[str, Any]:
    """The configuration as plain data for printing, with credentials in URLs redacted."""
    return _redacted(dataclasses.asdict(config))


def _redacted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v) for v in value]
    if isinstance(value, Secret):
        return "***" if value else ""
    if isinstance(value, str) and "@" in value and "://" in value:
        parts = urlsplit(value)
        if parts.password is not None or parts.username is not None:
            return parts._replace(netloc=f"***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")).geturl()
    return value


class _EnvText(str):
    """A value that came from the environment, so still text to be parsed."""


def _read_yaml(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError("--config", str(path), f"a readable YAML file ({exc.strerror})") from None
    except yaml.YAMLError as exc:  # its message names the line; the file is named here
        raise ConfigError("--config", str(path), f"valid YAML ({str(exc).replace('<unicode string>', str(path))})") from None
    if not isinstance(data, dict):
        raise ConfigError("<root>", data, "a mapping of sections")
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(str(section), values, f"one of the sections {', '.join(SECTIONS)}{_closest(str(section), SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(section, values, "a mapping of keys")
    return data


def _environment_overrides(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    # Longest section first, so that K2_CIRCUIT_BREAKER_X is not read as section "circuit".
    prefixes = sorted(((f"K2_{s.upper()}_", s) for s in SECTIONS), key=lambda p: -len(p[0]))
    overrides = []
    for variable, text in sorted(environ.items()):
        match = next(((prefix, s) for prefix, s in prefixes if variable.startswith(prefix)), None)
        if match is not None:
            prefix, section = match
            overrides.append((f"{section}.{variable[len(prefix):].lower()}", text))
        elif variable.startswith("K2_"):  # K2_METRIC_PORT would otherwise be ignored without a word
            names = [f"K2_{s.upper()}_{f.name.upper()}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
            raise ConfigError(variable, text, f"a K2_<SECTION>_<KEY> variable of the sections {', '.join(SECTIONS)}"
                                              f"{_closest(variable, names)}")
    return overrides


def _closest(name: str, known: Iterable[str]) -> str:
    """`; did you mean X?` when a known name is close to a misspelled one."""
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {matches[0]}?" if matches else ""


def _build_section(section: str, values: dict[str, Any]):
    cls = SECTIONS[section]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    secrets = [name for name, f in fields.items() if f.type == "Secret"]
    known = [*fields, *(name + SECRET_FILE_SUFFIX for name in secrets)]
    parsed = {}
    for name, value in values.items():
        key = f"{section}.{name}"
        if name not in known:
            raise ConfigError(key, value, f"one of the keys {', '.join(known)}{_closest(name, known)}")
        secret = name.removesuffix(SECRET_FILE_SUFFIX)
        if secret != name and secret in secrets:
            if secret in values:
                raise ConfigError(key, value, f"not set together with {section}.{secret}: one source per secret")
            parsed[secret] = _secret_file(key, value)
        else:
            parsed[name] = _PARSERS[(section, name)](key, value)
    return cls(**parsed)


# --- value parsers: each takes (key, value) and returns the typed value or raises ---


def _boolean(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, _EnvText) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, _EnvText) and value.strip().lower() in ("false", "0", "no", "off"):
        return False
    raise ConfigError(key, value, "true or false")


def _number(kind: type, minimum: float, maximum: float | None = None):
    def parse(key: str, value: Any):
        if isinstance(value, _EnvText):
            with contextlib.suppress(ValueError):
                value = kind(value.strip())
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int and is_number and float(value).is_integer():
            value = int(value)
        if not is_number or (kind is int and not isinstance(value, int)):
            raise ConfigError(key, value, f"{'an integer' if kind is int else 'a number'}")
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise ConfigError(key, value, f"a value of at least {minimum}{upper}")
        return kind(value)

    return parse


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, value, "a non-empty string")
    return str(value).strip()


def _optional_text(key: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(key, value, "a string")
    return str(value).strip()


def _choice(options: tuple[str, ...], normalise=str):
    def parse(key: str, value: Any) -> str:
        if isinstance(value, str) and normalise(value.strip()) in options:
            return normalise(value.strip())
        raise ConfigError(key, value, f"one of {', '.join(options)}")

    return parse


def _http_url(key: str, value: Any) -> str:
    if isinstance(value, str) and urlsplit(value.strip()).scheme in ("http", "https") and urlsplit(value.strip()).netloc:
        return value.strip()
    raise ConfigError(key, value, "an http:// or https:// URL")


def _list(key: str, value: Any) -> list:
    """A YAML list, or from the environment `A,B,C` or a JSON array."""
    if isinstance(value, _EnvText):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise ConfigError(key, text, "a comma-separated list or a JSON array") from None
        else:
            value = [item.strip() for item in text.split(",") if item.strip()]
    if not isinstance(value, list):
        raise ConfigError(key, value, "a list")
    return value


def _symbols(key: str, value: Any) -> tuple[str, ...]:
    items = _list(key, value)
    if not items:
        raise ConfigError(key, value, "a non-empty list of symbols such as BTCUSDT")
    symbols = []
    for item in items:
        if not isinstance(item, str) or not SYMBOL_PATTERN.match(item.strip().upper()):
            raise ConfigError(key, item, "a symbol of 2 to 20 letters or digits, such as BTCUSDT")
        symbols.append(item.strip().upper())
    if len(set(symbols)) != len(symbols):
        raise ConfigError(key, value, "a list without repeated symbols")
    return tuple(symbols)


def _stream_list(options: tuple[str, ...]) -> Callable[[str, Any], tuple[str, ...]]:
    """A venue's `streams`: a non-empty list of its stream names, each once."""
    def parse(key: str, value: Any) -> tuple[str, ...]:
        items = _list(key, value)
        if not items or any(item not in options for item in items) or len(set(items)) != len(items):
            raise ConfigError(key, value, f"a non-empty list, without repeats, of {', '.join(options)}")
        return tuple(items)
    return parse


def _spelled_symbols(pattern: re.Pattern[str], what: str, noun: str) -> Callable[[str, Any], tuple[str, ...]]:
    """A venue's `symbols` in its own spelling (Kraken's pairs, Coinbase's products): a
    non-empty list, each once."""
    def parse(key: str, value: Any) -> tuple[str, ...]:
        items = _list(key, value)
        symbols = [item.strip().upper() for item in items if isinstance(item, str)]
        if not items or len(symbols) != len(items) or not all(pattern.match(symbol) for symbol in symbols):
            raise ConfigError(key, value, f"a non-empty list of {what}")
        if len(set(symbols)) != len(symbols):
            raise ConfigError(key, value, f"a list without repeated {noun}")
        return tuple(symbols)
    return parse


def _venue_endpoint(venue: str) -> Callable[[str, Any], Endpoint]:
    """An endpoint of a venue whose section names only its own (Kraken's, Coinbase's)."""
    def parse(key: str, value: Any) -> Endpoint:
        url = _text(key, value)
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConfigError(key, value, "a ws:// or wss:// URL")
        return Endpoint(url, venue)
    return parse


def _venue_endpoints(venue: str) -> Callable[[str, Any], tuple[Endpoint, ...]]:
    endpoint = _venue_endpoint(venue)
    return lambda key, value: tuple(endpoint(f"{key}[{i}]", item) for i, item in enumerate(_list(key, value)))


def venue_of(url: str) -> str:
    """binance.us is a different exchange with its own trade ids; every other host is Binance."""
    host = urlsplit(url).hostname or ""
    return "BINANCEUS" if host == "binance.us" or host.endswith(".binance.us") else "BINANCE"


def _endpoint(key: str, value: Any) -> Endpoint:
    if isinstance(value, dict):
        unknown = set(value) - {"url", "venue"}
        if unknown or "url" not in value:
            raise ConfigError(key, value, "a URL or a mapping with keys url and venue")
        url = value["url"]
        venue = _choice(VENUES, str.upper)(f"{key}.venue", value.get("venue") or venue_of(str(url)))
    else:
        url, venue = value, None
    if not isinstance(url, str):
        raise ConfigError(key, url, "a ws:// or wss:// URL")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(key, url, "a ws:// or wss:// URL")
    return Endpoint(url.strip(), venue or venue_of(url))


def _endpoint_or_text(key: str, value: Any) -> Endpoint:
    # From the environment a single endpoint may also be given as a JSON object.
    if isinstance(value, _EnvText) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(key, value, "a ws:// or wss:// URL or a JSON object") from None
    return _endpoint(key, value)


def _endpoints(key: str, value: Any) -> tuple[Endpoint, ...]:
    return tuple(_endpoint(f"{key}[{i}]", item) for i, item in enumerate(_list(key, value)))


def _rest_urls(key: str, value: Any) -> dict[str, str]:
    """A mapping venue -> http(s) URL; from the environment `BINANCE=https://..,BINANCEUS=..` or JSON."""
    if isinstance(value, _EnvText):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("{") else dict(item.split("=", 1) for item in text.split(","))
        except (json.JSONDecodeError, ValueError):
            raise ConfigError(key, text, "VENUE=URL pairs separated by commas, or a JSON object") from None
    if not isinstance(value, dict):
        raise ConfigError(key, value, "a mapping of venue to URL")
    urls = dict(BinanceConfig().rest_urls)
    for venue, url in value.items():
        venue = _choice(VENUES, str.upper)(f"{key}.{venue}", venue)
        urls[venue] = _http_url(f"{key}.{venue}", url).rstrip("/")
    return urls


def _secret(key: str, value: Any) -> Secret:
    if value is None:
        return Secret("")
    if not isinstance(value, str):
        raise ConfigError(key, "***", "a string")
    return Secret(value.strip())


def _secret_file(key: str, value: Any) -> Secret:
    path = _existing_file(key, value)
    try:
        return Secret(Path(path).read_text().strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, path, f"a readable text file ({exc})") from None


def _existing_file(key: str, value: Any) -> str:
    text = _text(key, value)
    if not Path(text).is_file():
        raise ConfigError(key, text, "the path of an existing file")
    return text


def _optional_file(key: str, value: Any) -> str:
    return _existing_file(key, value) if _optional_text(key, value) else ""


def _ip_address(key: str, value: Any) -> str:
    try:
        return str(ipaddress.ip_address(_text(key, value)))
    except ValueError:
        raise ConfigError(key, value, "an IP address such as 0.0.0.0, 127.0.0.1 or ::") from None


def _topic(key: str, value: Any) -> str:
    text = _text(key, value)
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", text):
        raise ConfigError(key, value, "a Kafka topic name of letters, digits, '.', '_' or '-'")
    return text


def _optional_topic(key: str, value: Any) -> str:
    return _topic(key, value) if _optional_text(key, value) else ""


# The keys every venue's section has, read alike.
_VENUE_PARSERS = {
    "enabled": _boolean,
    "mode": _choice(MODES, str.lower),
    "stale_timeout_seconds": _number(float, 0.1),
    "reconnect_delay_seconds": _number(float, 0.0),
    "reconnect_max_delay_seconds": _number(float, 0.0),
    "max_connection_age_seconds": _number(float, 1.0),
    "max_frame_bytes": _number(int, 1024, 16 * 1024 * 1024),
    "backfill": _boolean,
    "tls_ca_file": _optional_file,
    "tls_verify": _boolean,
    "book_cadence_seconds": _number(float, 0.001),
}

_PARSERS = {
    **{(section, name): parser for section in ("binance", "kraken", "coinbase") for name, parser in _VENUE_PARSERS.items()},
    **{(section, "backfill_max_age_seconds"): _number(float, 1.0) for section in ("binance", "kraken")},
    ("binance", "websocket_url"): _endpoint_or_text,
    ("binance", "failover_urls"): _endpoints,
    ("binance", "symbols"): _symbols,
    ("binance", "streams"): _stream_list(SUBSCRIBABLE),
    ("binance", "rest_urls"): _rest_urls,
    ("binance", "book_depth"): _number(int, 1, MAX_DEPTH_LIMIT),
    ("binance", "book_snapshot_limit"): _number(int, 1, MAX_DEPTH_LIMIT),
    ("kraken", "websocket_url"): _venue_endpoint(kraken.VENUE),
    ("kraken", "failover_urls"): _venue_endpoints(kraken.VENUE),
    ("kraken", "symbols"): _spelled_symbols(KRAKEN_SYMBOL_PATTERN, "Kraken pairs in its v2 spelling, such as BTC/USD", "pairs"),
    ("kraken", "streams"): _stream_list(KRAKEN_STREAMS),
    ("kraken", "book_depth"): _number(int, 1, kraken.CHECKSUM_LEVELS),
    ("kraken", "rest_url"): _http_url,
    ("coinbase", "websocket_url"): _venue_endpoint(coinbase.VENUE),
    ("coinbase", "failover_urls"): _venue_endpoints(coinbase.VENUE),
    ("coinbase", "symbols"): _spelled_symbols(COINBASE_PRODUCT_PATTERN, "Coinbase product ids, such as BTC-USD", "products"),
    ("coinbase", "streams"): _stream_list(coinbase.SUBSCRIBABLE),
    ("coinbase", "rest_url"): _http_url,
    ("coinbase", "book_depth"): _number(int, 1, MAX_DEPTH_LIMIT),
    ("kafka", "bootstrap_servers"): _text,
    ("kafka", "schema_registry_url"): _http_url,
    ("kafka", "topic"): _topic,
    ("kafka", "aggtrade_topic"): _topic,
    ("kafka", "quote_topic"): _topic,
    ("kafka", "book_topic"): _topic,
    ("kafka", "raw_topic"): _topic,
    ("kafka", "kraken_trade_topic"): _topic,
    ("kafka", "kraken_quote_topic"): _topic,
    ("kafka", "kraken_book_topic"): _topic,
    ("kafka", "kraken_raw_topic"): _topic,
    ("kafka", "coinbase_trade_topic"): _topic,
    ("kafka", "coinbase_quote_topic"): _topic,
    ("kafka", "coinbase_book_topic"): _topic,
    ("kafka", "coinbase_raw_topic"): _topic,
    ("kafka", "dlq_topic"): _optional_topic,
    ("kafka", "create_topics"): _boolean,
    ("kafka", "topic_partitions"): _number(int, 1, 10000),
    ("kafka", "compression_type"): _choice(("none", "gzip", "snappy", "lz4", "zstd"), str.lower),
    ("kafka", "enable_idempotence"): _boolean,
    ("kafka", "acks"): _choice(("all", "-1", "0", "1"), str.lower),
    ("kafka", "batch_size"): _number(int, 1, 2**31 - 1),
    ("kafka", "linger_ms"): _number(int, 0, 900000),
    ("kafka", "max_buffered_records"): _number(int, 1000, 10_000_000),
    ("kafka", "security_protocol"): _choice(("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"), str.upper),
    ("kafka", "sasl_mechanism"): _choice(("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"), str.upper),
    ("kafka", "sasl_username"): _optional_text,
    ("kafka", "sasl_password"): _secret,
    ("kafka", "ssl_ca_location"): _optional_file,
    ("kafka", "ssl_certificate_location"): _optional_file,
    ("kafka", "ssl_key_location"): _optional_file,
    ("kafka", "ssl_key_password"): _secret,
    ("kafka", "schema_registry_username"): _optional_text,
    ("kafka", "schema_registry_password"): _secret,
    ("kafka", "schema_registry_ca_location"): _optional_file,
    ("kafka", "schema_registry_certificate_location"): _optional_file,
    ("kafka", "schema_registry_key_location"): _optional_file,
    ("raw", "enabled"): _boolean,
    ("raw", "receipts_dir"): _text,
    ("circuit_breaker", "failure_threshold"): _number(int, 1),
    ("circuit_breaker", "reset_timeout_seconds"): _number(float, 0.0),
    ("circuit_breaker", "exit_after_open_seconds"): _number(float, 1.0),
    ("metrics", "port"): _number(int, 1, 65535),
    ("metrics", "bind_address"): _ip_address,
    ("log", "level"): _choice(LOG_LEVELS, str.upper),
    ("log", "format"): _choice(LOG_FORMATS, str.lower),
    ("cluster", "enabled"): _boolean,
    ("cluster", "group_id"): _topic,  # it names the control topic
    ("cluster", "session_timeout_seconds"): _number(float, 6.0, 300.0),
}
