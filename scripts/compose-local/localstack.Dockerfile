# The project's image plus the simulator's one extra dependency: the Schema Registry double
# and the exchange simulator (python -m k2actors.localstack) in place of Confluent's registry
# and of Binance.
FROM k2actors:latest
USER root
RUN pip install --no-cache-dir "websockets>=14"
USER 10001:10001
