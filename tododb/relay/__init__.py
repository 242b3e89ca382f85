"""The relay: the event store is the outbox; this publishes it to Kafka, at least once."""
