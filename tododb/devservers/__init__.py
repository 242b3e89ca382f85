"""Local servers for development and tests: embedded PostgreSQL, Tansu (Kafka-compatible)."""
