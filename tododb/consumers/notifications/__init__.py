"""The notifications service: a consumer, its store (schema notifications) and webhook delivery."""
