"""Errors of the analytics domain (rendered as problem+json by ``tesai.errors``)."""

from __future__ import annotations

from tesai.errors import InvalidInput, NotFound


class ReportNotFound(NotFound):
    code = "report_not_found"


class ReportParamsInvalid(InvalidInput):
    """A window, grain, filter or limit the report cannot take."""

    code = "report_params_invalid"
