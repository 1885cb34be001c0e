"""Report frames as downloadable files: CSV (UTF-8, header row) and Parquet (pyarrow)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pandas as pd

from tesai.analytics.reports import ReportParams

MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}


@dataclass(frozen=True)
class Export:
    body: bytes
    media_type: str
    filename: str


def _stamp(params: ReportParams) -> str:
    fmt = "%Y%m%dT%H%MZ"
    return f"{params.since.strftime(fmt)}-{params.until.strftime(fmt)}"


def export(df: pd.DataFrame, fmt: str, name: str, params: ReportParams) -> Export:
    """``df`` as a ``csv`` or ``parquet`` file named after the report and its window."""
    if fmt == "csv":
        body = df.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%SZ").encode()
    elif fmt == "parquet":
        buf = io.BytesIO()
        df.to_parquet(buf, index=False, engine="pyarrow")
        body = buf.getvalue()
    else:
        raise ValueError(fmt)
    return Export(body, MEDIA_TYPES[fmt], f"tesai-{name}-{_stamp(params)}.{fmt}")
