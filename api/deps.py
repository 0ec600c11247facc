"""FastAPI dependencies, as ``Annotated`` aliases: ``SessionDep``, ``SessionFactoryDep``, ``SettingsDep``,
``CurrentPrincipal``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session, sessionmaker

from api.auth.keys import authenticate
from backend.settings import Settings


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_session(request: Request) -> Iterator[Session]:
    session: Session = request.app.state.session_factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


def get_session_factory(request: Request) -> sessionmaker[Session]:
    """For work that opens its own short sessions (storing an upload, releasing a file after a delete)."""
    return request.app.state.session_factory


SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]


@dataclass(frozen=True)
class Principal:
    """Who is calling: every query is filtered by ``owner``."""

    owner: str
    key_id: str
    scopes: frozenset[str]

    def can(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def get_principal(request: Request, session: SessionDep) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing API key: send 'Authorization: Bearer <key>' (create one with `lambdahat keys create`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = authenticate(session, token.strip())
    if key is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="invalid or revoked API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Principal(owner=key.owner, key_id=key.id, scopes=frozenset(key.scopes or []))


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
