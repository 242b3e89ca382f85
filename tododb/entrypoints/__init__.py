"""Entry points: the `todo` command, the composition root and the supervisor. Only these wire."""
