"""The PostgreSQL event store: the library's recorder, append-only, written by group commit.

- ``recorder``: ``AppendOnlyApplicationRecorder``, the library's application recorder
  with triggers that reject changes to history, the queries tododb adds, and appends
  routed through the group committer.
- ``committer``: leader/follower group commit (queue, batches, hand-over).
- ``writer``: the SQL of one batch (table lock, conflict check, one INSERT, savepoints
  when a command's data is bad).
- ``batches``: the pure rules (batch limits, which commands of a batch win).
- ``factory``: ``TodoPostgresFactory``, chosen by ``PERSISTENCE_MODULE``, with bounded
  waits when the database is unreachable.
"""

from tododb.eventstore.factory import BoundedDatastore, TodoPostgresFactory
from tododb.eventstore.recorder import AppendOnlyApplicationRecorder

__all__ = ["AppendOnlyApplicationRecorder", "BoundedDatastore", "TodoPostgresFactory"]
