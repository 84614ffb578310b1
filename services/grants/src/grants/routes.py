"""HTTP routes of the grants service."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
