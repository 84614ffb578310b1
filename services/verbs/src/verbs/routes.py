"""HTTP routes of the verbs service."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
