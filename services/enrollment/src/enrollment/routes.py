"""HTTP routes of the enrollment service."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
