"""The read side: projections of the global event log into PostgreSQL read models."""
