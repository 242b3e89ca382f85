"""tododb: an event-sourced todo backend."""
