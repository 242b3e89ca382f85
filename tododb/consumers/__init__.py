"""Downstream services fed by the Kafka topic: a shared consumer core and its handlers."""
