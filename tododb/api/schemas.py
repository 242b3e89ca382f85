"""Request and response bodies of contract v1. Unknown fields are rejected."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from tododb.domain import Todo
from tododb.domain.invariants import DESCRIPTION_MAX, TAG_MAX, TAGS_MAX, TITLE_MAX

PriorityName = Literal["low", "normal", "high"]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=TAG_MAX, pattern=r"^[a-z0-9-]+$")]
Title = Annotated[str, StringConstraints(max_length=TITLE_MAX * 2)]
Description = Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TodoCreate(StrictModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "title": "Write the quarterly report",
                    "description": "Numbers from finance first",
                    "due": "2026-12-01T17:00:00Z",
                    "priority": "high",
                    "tags": ["work", "q4"],
                }
            ]
        },
    )

    title: Title = Field(description=f"1-{TITLE_MAX} characters after stripping")
    description: Description = ""
    due: AwareDatetime | None = None
    priority: PriorityName = "normal"
    tags: list[Tag] = Field(default_factory=list, max_length=TAGS_MAX)


class TodoPatch(StrictModel):
    """Any subset of fields; ``"due": null`` clears the due date."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"title": "Write the Q4 report", "due": None}]},
    )

    title: Title | None = None
    description: Description | None = None
    due: AwareDatetime | None = None
    priority: PriorityName | None = None
    tags: list[Tag] | None = Field(default=None, max_length=TAGS_MAX)

    def changes(self) -> dict[str, Any]:
        """Only the fields the client sent; null is meaningful for ``due`` alone."""
        sent = {name: getattr(self, name) for name in self.model_fields_set}
        for name, value in sent.items():
            if value is None and name != "due":
                raise ValueError(f"{name} may not be null")
        return sent


class TodoOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "6f1c2a5e-2b1d-4c1e-9a7b-0d3f5e6a7b8c",
                    "title": "Write the quarterly report",
                    "description": "Numbers from finance first",
                    "due": "2026-12-01T17:00:00Z",
                    "priority": "high",
                    "tags": ["q4", "work"],
                    "status": "open",
                    "created_at": "2026-11-25T09:00:00Z",
                    "updated_at": "2026-11-25T09:00:00Z",
                    "completed_at": None,
                    "version": 1,
                }
            ]
        }
    )

    id: UUID
    title: str
    description: str
    due: datetime | None
    priority: PriorityName
    tags: list[str]
    status: Literal["open", "completed"]
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    version: int

    @classmethod
    def from_todo(cls, todo: Todo) -> TodoOut:
        return cls(
            id=todo.id,
            title=todo.title,
            description=todo.description,
            due=todo.due,
            priority=todo.priority.value,
            tags=list(todo.tags),
            status=todo.status.value,
            created_at=todo.created_at,
            updated_at=todo.updated_at,
            completed_at=todo.completed_at,
            version=todo.version,
        )


class EventOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0b6f5c3e-1d2a-5f4e-8c7b-6a5d4e3f2a1b",
                    "type": "todos.task.completed",
                    "version": 2,
                    "position": 42,
                    "occurred_at": "2026-11-25T10:00:00Z",
                    "data": {},
                }
            ]
        }
    )

    id: UUID
    type: str
    version: int
    position: int | None = Field(description="Global log position")
    occurred_at: datetime
    data: dict[str, Any]


class ProblemOut(BaseModel):
    """RFC 9457 problem details (``application/problem+json``)."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


class Health(BaseModel):
    status: str
