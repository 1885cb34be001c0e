"""Responses of the analytics endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

Grain = Literal["hour", "day"]
Format = Literal["json", "csv", "parquet"]


class ReportInfo(BaseModel):
    name: str
    description: str
    public: bool


class ReportOut(BaseModel):
    """A report as JSON: its column names, then one object per row."""

    report: str
    since: datetime
    until: datetime
    grain: Grain
    columns: list[str]
    rows: list[dict[str, Any]]
