"""Real local stand-ins for the services k2actors talks to, for tests and the offline demo:
the Tansu Kafka broker, a Schema Registry double, and a Binance exchange simulator."""
