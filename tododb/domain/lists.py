"""The TodoList aggregate: a named list of todos and the members who share it.

Roles: an ``owner`` may do everything (rename, members, delete); an ``editor`` every
command on the list's todos; a ``viewer`` only reads. The list's todos are separate
aggregates that name their list, so a busy list never serialises its todos' commands.
Each user's Inbox has an id derived from the user, so it is found without a lookup and
made on first use; it is theirs alone.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from tododb.domain.errors import InboxFixed, InvariantViolation, LastOwner, ListDeletedError
from tododb.domain.invariants import MEMBERS_MAX, clean_list_name, clean_user_id

INBOX_NAMESPACE = UUID("3d4b9a1e-6c2f-4e8a-b5d7-1f0e2c3a4b5d")
INBOX_NAME = "Inbox"


class Role(StrEnum):
    OWNER = "owner"
    EDITOR = "editor"
    VIEWER = "viewer"


ROLES = tuple(r.value for r in Role)


@lru_cache(maxsize=65_536)
def inbox_id(user: str) -> UUID:
    """The id of ``user``'s Inbox: the same everywhere, with no read (cached: every
    command's access check asks for the actor's)."""
    return uuid5(INBOX_NAMESPACE, user)


def clean_role(role: str) -> Role:
    if role not in ROLES:
        raise InvariantViolation("role", f"must be one of {', '.join(ROLES)}")
    return Role(role)


class TodoList(Aggregate):
    """A list, its name and its members (user id → role)."""

    class Created(Aggregate.Created):
        owner: str
        name: str
        inbox: bool
        actor: str

    @event(Created)
    def __init__(self, owner: str, name: str, inbox: bool, actor: str) -> None:
        self.owner = owner
        self.name = name
        self.inbox = inbox
        self.members: dict[str, Role] = {owner: Role.OWNER}
        self.deleted = False

    @classmethod
    def create(cls, *, owner: str, name: str, id: UUID | None = None) -> TodoList:
        owner = clean_user_id(owner)
        return cls._create(
            cls.Created, id=id, owner=owner, name=clean_list_name(name), inbox=False, actor=owner
        )

    @classmethod
    def create_inbox(cls, user: str) -> TodoList:
        user = clean_user_id(user)
        return cls._create(
            cls.Created, id=inbox_id(user), owner=user, name=INBOX_NAME, inbox=True, actor=user
        )

    # ---- queries --------------------------------------------------------------------

    def role_of(self, user: str) -> Role | None:
        return None if self.deleted else self.members.get(user)

    @property
    def owners(self) -> list[str]:
        return sorted(u for u, r in self.members.items() if r is Role.OWNER)

    # ---- commands (the caller has checked the actor may) ----------------------------

    def rename(self, name: str, *, actor: str) -> None:
        self._check_shared_list()
        name = clean_list_name(name)
        if name != self.name:
            self._renamed(name=name, actor=actor)

    def set_member(self, user: str, role: str, *, actor: str) -> None:
        self._check_shared_list()
        user, new_role = clean_user_id(user), clean_role(role)
        current = self.members.get(user)
        if current is new_role:
            return
        if current is None and len(self.members) >= MEMBERS_MAX:
            raise InvariantViolation("members", f"a list has at most {MEMBERS_MAX} members")
        if current is Role.OWNER and self.owners == [user]:
            raise LastOwner(f"{user} is the list's last owner")
        self._member_set(user=user, role=new_role.value, actor=actor)

    def remove_member(self, user: str, *, actor: str) -> None:
        """Removing someone who is not a member records nothing."""
        self._check_shared_list()
        if user not in self.members:
            return
        if self.owners == [user]:
            raise LastOwner(f"{user} is the list's last owner")
        self._member_removed(user=user, actor=actor)

    def delete(self, *, actor: str) -> None:
        if self.inbox:
            raise InboxFixed("an Inbox cannot be deleted")
        if not self.deleted:
            self._deleted(actor=actor)

    def _check_shared_list(self) -> None:
        if self.deleted:
            raise ListDeletedError(f"list {self.id} is deleted")
        if self.inbox:
            raise InboxFixed("an Inbox cannot be renamed or shared")

    # ---- events ---------------------------------------------------------------------

    @event("Renamed")
    def _renamed(self, name: str, actor: str) -> None:
        self.name = name

    @event("MemberSet")
    def _member_set(self, user: str, role: str, actor: str) -> None:
        self.members[user] = Role(role)

    @event("MemberRemoved")
    def _member_removed(self, user: str, actor: str) -> None:
        self.members.pop(user, None)

    @event("Deleted")
    def _deleted(self, actor: str) -> None:
        self.deleted = True

    @property
    def created_at(self) -> datetime:
        return self.created_on

    @property
    def updated_at(self) -> datetime:
        return self.modified_on
