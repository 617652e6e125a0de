"""Annotated dependency aliases shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from jobs.store import JobStore
from service.settings import ApiSettings


def get_store(request: Request) -> JobStore:
    """The app's JobStore."""
    return request.app.state.store


def get_settings(request: Request) -> ApiSettings:
    """The app's settings."""
    return request.app.state.settings


Store = Annotated[JobStore, Depends(get_store)]
Settings = Annotated[ApiSettings, Depends(get_settings)]
