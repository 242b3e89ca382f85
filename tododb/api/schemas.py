"""Request and response bodies of contract v1. Unknown fields are rejected."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)
from pydantic.json_schema import SkipJsonSchema

from tododb.domain import Todo, TodoList
from tododb.domain.invariants import (
    DESCRIPTION_MAX,
    LIST_NAME_MAX,
    STEP_TEXT_MAX,
    STEPS_MAX,
    TAG_MAX,
    TAGS_MAX,
    TITLE_MAX,
    USER_ID_MAX,
    clean_due,
    clean_text,
)
from tododb.domain.recurrence import RULE_MAX


def text_rule(field: str) -> AfterValidator:
    """The domain's rule for text that becomes data, applied at the edge: a bad field is a
    422 before the request reaches the application (``InvariantViolation`` is a
    ``ValueError``, which pydantic reports as a validation error)."""

    def check(value: str) -> str:
        return clean_text(field, value)

    return AfterValidator(check)


PriorityName = Literal["low", "normal", "high"]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=TAG_MAX, pattern=r"^[a-z0-9-]+$")]
Title = Annotated[str, StringConstraints(max_length=TITLE_MAX * 2), text_rule("title")]
Description = Annotated[
    str, StringConstraints(max_length=DESCRIPTION_MAX), text_rule("description")
]
# The domain's range check, so a date that overflows on its way to UTC is a 422 here.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def rfc3339(value: Any) -> Any:
    """Only RFC 3339 strings with an offset: lax mode would read ``0`` as the epoch."""
    if not isinstance(value, str) or _RFC3339.fullmatch(value) is None:
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2030-01-01T00:00:00Z")
    return value


Due = Annotated[AwareDatetime, BeforeValidator(rfc3339), AfterValidator(clean_due)]
USER_ID_JSON_PATTERN = rf"^[A-Za-z0-9._~@:|+=-]{{1,{USER_ID_MAX}}}$"
"""The domain's user id rule (``clean_user_id``), as a JSON Schema pattern."""
UserId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=USER_ID_MAX, pattern=USER_ID_JSON_PATTERN),
]
Recurrence = Annotated[
    str,
    StringConstraints(min_length=1, max_length=RULE_MAX),
    text_rule("recurrence"),
    Field(
        description="An RFC 5545 RRULE (FREQ DAILY, WEEKLY, MONTHLY or YEARLY; INTERVAL, "
        "COUNT, UNTIL, BYDAY, BYMONTHDAY, BYMONTH, WKST), recurring from the due date, "
        "which it needs.",
        examples=["FREQ=WEEKLY;BYDAY=MO"],
    ),
]
ListName = Annotated[str, StringConstraints(max_length=LIST_NAME_MAX * 2), text_rule("name")]
StepText = Annotated[str, StringConstraints(max_length=STEP_TEXT_MAX * 2), text_rule("text")]
RoleName = Literal["owner", "editor", "viewer"]


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
    due: Due | None = None
    priority: PriorityName = "normal"
    tags: list[Tag] = Field(default_factory=list, max_length=TAGS_MAX)
    list_id: UUID | None = Field(
        default=None, description="A list the caller may edit; none: the caller's Inbox."
    )
    assignee: UserId | None = Field(default=None, description="A member of the list.")
    recurrence: Recurrence | None = None
    remind_at: Due | None = Field(
        default=None, description="When to remind the assignee (else every member)."
    )


class TodoPatch(StrictModel):
    """Any subset of fields; null clears ``due``, ``assignee``, ``recurrence`` or
    ``remind_at``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"title": "Write the Q4 report", "due": None}]},
    )

    title: Title | None = None
    description: Description | None = None
    due: Due | None = None
    priority: PriorityName | None = None
    tags: list[Tag] | None = Field(default=None, max_length=TAGS_MAX)
    assignee: UserId | None = Field(default=None, description="A member of the list.")
    recurrence: Recurrence | None = None
    remind_at: Due | None = Field(
        default=None, description="When to remind the assignee (else every member)."
    )

    def changes(self) -> dict[str, Any]:
        """Only the fields the client sent; null is meaningful for ``due``, ``assignee``,
        ``recurrence`` and ``remind_at`` alone."""
        sent = {name: getattr(self, name) for name in self.model_fields_set}
        for name, value in sent.items():
            if value is None and name not in NULLABLE:
                raise ValueError(f"{name} may not be null")
        return sent


NULLABLE = frozenset({"due", "assignee", "recurrence", "remind_at"})


class TodoMove(StrictModel):
    """Where to: a list (default: the todo's own), and neighbours there (todo ids)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"after": "6f1c2a5e-2b1d-4c1e-9a7b-0d3f5e6a7b8c"}]},
    )

    list_id: UUID | None = Field(default=None, description="The list to move to.")
    after: UUID | None = Field(default=None, description="Right after this todo of the list.")
    before: UUID | None = Field(
        default=None, description="Right before this todo of the list. Neither: to the end."
    )


class StepCreate(StrictModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"text": "Call"}]})

    text: StepText = Field(description=f"1-{STEP_TEXT_MAX} characters after stripping")


class StepPatch(StrictModel):
    """Any subset: rename, check (``done``) and move (``index``, clamped) in one command."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"done": True}, {"index": 0}]}
    )

    text: StepText | SkipJsonSchema[None] = None
    done: bool | SkipJsonSchema[None] = None
    index: Annotated[int, Field(ge=0, le=STEPS_MAX)] | SkipJsonSchema[None] = None


class ListCreate(StrictModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "Home"}]})

    name: ListName = Field(description=f"1-{LIST_NAME_MAX} characters after stripping")


class ListPatch(ListCreate):
    pass


class MemberPut(StrictModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"role": "editor"}]})

    role: RoleName


class MemberOut(BaseModel):
    user: str
    role: RoleName


class ListOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "3e0f6a34-9f6b-4a9c-8d6e-2b5f7c1d9e04",
                    "name": "Home",
                    "inbox": False,
                    "owner": "alice",
                    "role": "owner",
                    "members": [
                        {"user": "alice", "role": "owner"},
                        {"user": "bob", "role": "editor"},
                    ],
                    "created_at": "2026-11-25T09:00:00Z",
                    "updated_at": "2026-11-25T09:05:00Z",
                    "version": 2,
                }
            ]
        }
    )

    id: UUID
    name: str
    inbox: bool = Field(description="The caller's Inbox: cannot be renamed, shared or deleted.")
    owner: str = Field(description="Who made the list.")
    role: RoleName = Field(description="The caller's role.")
    members: list[MemberOut]
    created_at: datetime
    updated_at: datetime
    version: int

    @classmethod
    def from_list(cls, todo_list: TodoList, caller: str) -> ListOut:
        role = todo_list.role_of(caller)
        assert role is not None
        return cls(
            id=todo_list.id,
            name=todo_list.name,
            inbox=todo_list.inbox,
            owner=todo_list.owner,
            role=role.value,
            members=[
                MemberOut(user=user, role=r.value) for user, r in sorted(todo_list.members.items())
            ],
            created_at=todo_list.created_at,
            updated_at=todo_list.updated_at,
            version=todo_list.version,
        )


class StepOut(BaseModel):
    id: UUID
    text: str
    done: bool


class TodoOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "6f1c2a5e-2b1d-4c1e-9a7b-0d3f5e6a7b8c",
                    "list_id": "00c04111-c90d-5804-b2c4-b2d64b713f1f",
                    "title": "Write the quarterly report",
                    "description": "Numbers from finance first",
                    "due": "2026-12-01T17:00:00Z",
                    "priority": "high",
                    "tags": ["q4", "work"],
                    "status": "open",
                    "order_key": "k008Dw9mUkIB4kbr2dwfz9ipKS0QBIV9yCV",
                    "assignee": "bob",
                    "recurrence": "FREQ=WEEKLY;BYDAY=MO",
                    "remind_at": "2026-12-01T08:00:00Z",
                    "steps": [
                        {
                            "id": "2b9d3c4e-5f60-4a1b-8c2d-3e4f5a6b7c8d",
                            "text": "Get numbers",
                            "done": True,
                        }
                    ],
                    "completions": 0,
                    "created_at": "2026-11-25T09:00:00Z",
                    "updated_at": "2026-11-25T09:00:00Z",
                    "completed_at": None,
                    "version": 1,
                }
            ]
        }
    )

    id: UUID
    list_id: UUID
    title: str
    description: str
    due: datetime | None
    priority: PriorityName
    tags: list[str]
    status: Literal["open", "completed"]
    order_key: str = Field(
        description="The todo's place in its list: sort by it byte-wise (`sort=position`)."
    )
    assignee: str | None
    recurrence: str | None = Field(description="An RFC 5545 RRULE, from the due date.")
    remind_at: datetime | None
    steps: list[StepOut]
    completions: int = Field(description="Completions of a recurring todo so far.")
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    version: int

    @classmethod
    def from_todo(cls, todo: Todo) -> TodoOut:
        return cls(
            id=todo.id,
            list_id=todo.list_id,
            title=todo.title,
            description=todo.description,
            due=todo.due,
            priority=todo.priority.value,
            tags=list(todo.tags),
            status=todo.status.value,
            order_key=todo.order_key,
            assignee=todo.assignee,
            recurrence=todo.recurrence,
            remind_at=todo.remind_at,
            steps=[StepOut.model_validate(s) for s in todo.steps],
            completions=todo.completions,
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
                    "actor": "bob",
                    "data": {"actor": "bob", "next_due": None},
                }
            ]
        }
    )

    id: UUID
    type: str
    version: int
    position: int | None = Field(description="Global log position")
    occurred_at: datetime
    actor: str = Field(description="The user whose command caused the event.")
    data: dict[str, Any]
    metadata: dict[str, str] | None = Field(
        default=None,
        description="The storing command's `correlation_id`, `causation_id` and W3C trace "
        "context (`traceparent`, `tracestate`); null on events stored before they were "
        "recorded.",
    )


class ProblemOut(BaseModel):
    """RFC 9457 problem details (``application/problem+json``). Some problems carry
    extension members: ``errors`` (422), ``current_version`` (412), ``position`` (503
    ``read-model-behind``), ``limit`` (429 ``rate-limited``)."""

    type: str = Field(description="`https://tododb.dev/problems/<kind>`, or `about:blank`")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


PROBLEM_JSON_SCHEMA: dict[str, Any] = ProblemOut.model_json_schema()

# Response headers, for the OpenAPI document (``responses={200: {"headers": ...}}``).
ETAG_HEADER: dict[str, Any] = {
    "description": 'The todo\'s version, quoted (`"3"`): send it back as If-Match.',
    "required": True,
    "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
}
X_POSITION_HEADER: dict[str, Any] = {
    "description": "Global log position: of the todo's latest event on a command (send it "
    "as X-Min-Position to read your write); the one the read model reflects on a query.",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}
LOCATION_HEADER: dict[str, Any] = {
    "description": "Where the created resource is.",
    "required": True,
    "schema": {"type": "string"},
}

_BEARER_CHALLENGE = {
    "description": '`Bearer`, with `error="invalid_token"` for a bad or expired token.',
    "required": True,
    "schema": {"type": "string"},
}
_RETRY_AFTER = {
    "description": "Seconds to wait before trying again.",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}

PROBLEMS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("Bad request: a body that is not JSON, or a malformed header or cursor.", {}),
    401: (
        "Missing, invalid or expired bearer token (`unauthorized`).",
        {"WWW-Authenticate": _BEARER_CHALLENGE},
    ),
    403: ("The endpoint needs an admin token (`forbidden`).", {}),
    404: ("Not found; someone else's resource answers the same (`not-found`).", {}),
    409: ("Conflict (`conflict`).", {}),
    410: ("The todo was deleted (`deleted`).", {}),
    412: (
        "If-Match is not the current version (`precondition-failed`); the ETag header and "
        "`current_version` give the current one.",
        {
            "ETag": {
                "description": "The current version, quoted.",
                "required": True,
                "schema": {"type": "string"},
            }
        },
    ),
    413: ("The body exceeds the size limit, 1 MiB by default (`too-large`).", {}),
    422: ("The request failed validation (`validation`), with `errors`.", {}),
    429: ("Too many requests from this user; see Retry-After.", {"Retry-After": _RETRY_AFTER}),
    503: (
        "The database is unreachable (`unavailable`); see Retry-After.",
        {"Retry-After": _RETRY_AFTER},
    ),
}


BAD_IF_MATCH = "Malformed If-Match (`bad-if-match`)."
NOT_JSON = "The body is not JSON (not even UTF-8)."
BAD_BODY = f"{NOT_JSON[:-1]}, or a malformed If-Match (`bad-if-match`)."
CONFLICT = "Other writers kept winning the race for the next version (`conflict`)."
"""Problem descriptions every command route shares (todos' and lists')."""


def problem_responses(
    *statuses: int, described: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the problems an operation can answer: each one
    ``application/problem+json`` only, with the headers it always carries. ``described``
    says what a status means for this operation, instead of the general description."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, headers = PROBLEMS[status]
        response: dict[str, Any] = {
            "description": (described or {}).get(status, description),
            "content": {"application/problem+json": {"schema": PROBLEM_JSON_SCHEMA}},
        }
        if headers:
            response["headers"] = headers
        # A copy each: the document must not share objects its readers may rewrite.
        responses[status] = copy.deepcopy(response)
    return responses


class Health(BaseModel):
    status: str
