"""Domain errors: raised by the aggregate, translated to HTTP by the API layer."""


class DomainError(Exception):
    """Base class of errors the domain raises on purpose."""


class InvariantViolation(DomainError, ValueError):
    """A command would break one of the aggregate's invariants."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class TodoDeletedError(DomainError):
    """A deleted todo takes no further commands."""
