"""The analytics service: a consumer and its store (schema analytics)."""
