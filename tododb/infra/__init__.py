"""Shared plumbing: settings, PostgreSQL and Kafka clients, locks, retries. No domain."""
