"""What every route depends on: settings, the store, the caches, the bearer check, and
the validated path and query parameter types.

The app's state (settings, opened stores, record and sample caches) lives on
``app.state``, never in module globals, so two apps in one process share nothing and a
test can override ``get_settings``.
"""

from __future__ import annotations

import secrets
import threading
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict

from cpu_scorer import _queries
from shared.records import ProfileRecord, RunRecord, Summary
from shared.store import PROFILE, RUN_RECORD, SUMMARY, FileStamp, Store, check_run_id

MAX_PAGE = 500  # rows or runs per page
# RUN_ID_PATTERN and TASK_PATTERN without "..", written without look-ahead (pydantic's
# regex engine has none) so the OpenAPI schema states exactly what is accepted: each
# dot is followed by another allowed character or ends the name.
RUN_ID_REGEX = r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.[A-Za-z0-9_-])*\.?$"
TASK_REGEX = r"^[a-z0-9](?:[a-z0-9_-]|\.[a-z0-9_-])*\.?$"


class Settings(BaseModel):
    """What the app serves and who may read it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store_uri: str
    token: str | None = None


class Records:
    """run.json, summary.json and profile.json per run, cached under the file's stamp (size, mtime):
    a run deleted while served is gone at the next request, a re-created one shows its
    new record, and an unchanged file is read once."""

    def __init__(self, capacity: int = 10_000):
        self.capacity = capacity
        self._items: dict[tuple[str, str, str], tuple[FileStamp, Any]] = {}
        self._lock = threading.Lock()

    def _cached(self, store: Store, run_id: str, name: str, read: Any) -> Any:
        path = store.run_path(check_run_id(run_id), name)
        stamp = store.stamp(path)
        key = (store.uri, run_id, name)
        if stamp is None:
            with self._lock:
                self._items.pop(key, None)
            return None
        with self._lock:
            hit = self._items.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = read()
        with self._lock:
            if len(self._items) >= self.capacity:
                self._items.clear()
            self._items[key] = (stamp, value)
        return value

    def record(self, store: Store, run_id: str) -> RunRecord:
        """The run's record; RunNotFound (404) or Damaged (503)."""
        record = self._cached(
            store, run_id, RUN_RECORD, lambda: _queries.require_run(store, run_id)
        )
        if record is None:
            raise _queries.RunNotFound(f"no run {run_id!r} in this store")
        return record

    def summary(self, store: Store, run_id: str) -> Summary | None:
        """The run's summary.json, or None when there is none or it cannot be read
        (the scorer rewrites it; the routes then compute one)."""

        def read() -> Summary | None:
            try:
                return store.summary(run_id)
            except _queries.TandemError:
                return None

        return self._cached(store, run_id, SUMMARY, read)

    def profile(self, store: Store, run_id: str) -> ProfileRecord | None:
        """The run's profile.json (``tandem profile``); None when there is none. A
        damaged one is Damaged (503): unlike the summary, nothing rewrites it."""

        def read() -> ProfileRecord | None:
            try:
                return store.profile(run_id)
            except _queries.TandemError as error:
                raise _queries.Damaged(f"run {run_id!r}: {error}") from error

        return self._cached(store, run_id, PROFILE, read)


def get_settings(request: Request) -> Settings:
    """The app's settings (a dependency: tests override it)."""
    return request.app.state.settings


def get_store(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> Store:
    stores: dict[str, Store] = request.app.state.stores
    if settings.store_uri not in stores:
        stores[settings.store_uri] = Store(settings.store_uri)
    return stores[settings.store_uri]


def get_records(request: Request) -> Records:
    return request.app.state.records


def get_samples(request: Request) -> _queries.SampleCache:
    return request.app.state.samples


_bearer = HTTPBearer(auto_error=False, description="Required when the server has a token")


def _verify(settings: Settings, given: str | None) -> None:
    if settings.token is None:
        return
    if not secrets.compare_digest((given or "").encode(), settings.token.encode()):
        raise HTTPException(
            401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


def authorize(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The bearer check, declared in the OpenAPI schema (apps created with a token)."""
    _verify(settings, credentials.credentials if credentials else None)


def authorize_if_set(
    settings: Annotated[Settings, Depends(get_settings)], request: Request
) -> None:
    """The same check for apps created without a token: undeclared in the schema (the
    routes are open), yet still enforced should overridden settings carry a token."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    _verify(settings, value.strip() if scheme.lower() == "bearer" else None)


StoreDep = Annotated[Store, Depends(get_store)]
RecordsDep = Annotated[Records, Depends(get_records)]
SamplesDep = Annotated[_queries.SampleCache, Depends(get_samples)]
RunId = Annotated[str, Path(pattern=RUN_ID_REGEX, max_length=128, description="run id")]
RunIdQuery = Annotated[str, Query(pattern=RUN_ID_REGEX, max_length=128)]
TaskName = Annotated[str | None, Query(pattern=TASK_REGEX, max_length=64)]
Offset = Annotated[int, Query(ge=0, le=10**9)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
