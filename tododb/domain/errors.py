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


class ListDeletedError(DomainError):
    """A deleted list takes no further commands."""


class InboxFixed(DomainError):
    """A user's Inbox is theirs alone: it cannot be renamed, shared, left or deleted."""


class LastOwner(DomainError):
    """A list keeps at least one owner: the last one cannot leave or be demoted."""


class StepNotFound(DomainError):
    """No step with that id on this todo."""
