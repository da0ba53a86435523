"""Strict field types for tool arguments.

Each type validates by hand so that a refusal carries the failure-taxonomy code an agent
can act on (and the allowed values), and declares the JSON schema that generated tool
definitions show to the model.
"""

from __future__ import annotations

import math
import re
from datetime import date
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, TypeVar

from crm_api.domain import ALLOWED_FILE_EXTENSIONS, MAX_AMOUNT
from crmbench_contracts.api_errors import ErrorCode
from crmbench_contracts.seeds import Checked, refuse, text_validator
from crmbench_contracts.seeds import text as text  # one of the strict field types

E = TypeVar("E", bound=StrEnum)

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s.][^@\s]*\.[^@\s.]{2,}$")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _email_validator(optional: bool) -> Any:
    base = text_validator(254, optional)

    def validate(value: Any) -> str | None:
        checked: str | None = base(value)
        if checked is None:
            return None
        if not _EMAIL_RE.match(checked):
            raise refuse(
                ErrorCode.MALFORMED_EMAIL,
                f"{checked!r} is not a well-formed email address (expected name@domain.tld)",
            )
        return checked

    return validate


def email(*, optional: bool = False) -> Checked:
    schema = {"type": "string", "format": "email", "maxLength": 254}
    return Checked(_email_validator(optional), schema)


def _amount_validator(optional: bool) -> Any:
    def validate(value: Any) -> Decimal | None:
        if value is None and optional:
            return None
        if not _is_number(value) or (isinstance(value, float) and not math.isfinite(value)):
            raise refuse(
                ErrorCode.TYPE_MISMATCH,
                f"expected a JSON number such as 5000 or 5000.50, got {value!r}",
            )
        if value < 0:
            raise refuse(ErrorCode.NEGATIVE_AMOUNT, "must be greater than 0")
        if value == 0:
            raise refuse(ErrorCode.ZERO_AMOUNT, "must be greater than 0")
        if value > MAX_AMOUNT:
            raise refuse(ErrorCode.AMOUNT_EXCEEDS_MAX, f"must be at most {MAX_AMOUNT:,}")
        try:
            amount = Decimal(str(value))
        except InvalidOperation:  # pragma: no cover - finite numbers always convert
            raise refuse(ErrorCode.TYPE_MISMATCH, "not a valid number") from None
        if amount != amount.quantize(Decimal("0.01")):
            raise refuse(ErrorCode.TYPE_MISMATCH, "at most two decimal places (cents)")
        return amount.quantize(Decimal("0.01"))

    return validate


def amount(*, optional: bool = False) -> Checked:
    schema = {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_AMOUNT}
    return Checked(_amount_validator(optional), schema)


def _probability(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value):
        raise refuse(
            ErrorCode.PROBABILITY_DECIMAL, f"must be a whole number from 0 to 100, got {value!r}"
        )
    if not _is_number(value) or isinstance(value, float):
        raise refuse(
            ErrorCode.TYPE_MISMATCH, f"expected an integer from 0 to 100 such as 75, got {value!r}"
        )
    if not 0 <= value <= 100:
        raise refuse(ErrorCode.PROBABILITY_OUT_OF_RANGE, f"must be from 0 to 100, got {value}")
    return int(value)


def probability() -> Checked:
    return Checked(_probability, {"type": "integer", "minimum": 0, "maximum": 100})


def _date_validator(optional: bool) -> Any:
    def validate(value: Any) -> date | None:
        if value is None and optional:
            return None
        if isinstance(value, str) and _DATE_RE.match(value):
            try:
                return date.fromisoformat(value)
            except ValueError:
                pass
        raise refuse(ErrorCode.INVALID_DATE_FORMAT, f"expected a date as YYYY-MM-DD, got {value!r}")

    return validate


def date_field(*, optional: bool = True) -> Checked:
    return Checked(_date_validator(optional), {"type": "string", "format": "date"})


def _enum_validator(enum_cls: type[E], optional: bool) -> Any:
    allowed = [member.value for member in enum_cls]

    def validate(value: Any) -> E | None:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise refuse(ErrorCode.TYPE_MISMATCH, f"expected one of {allowed}", allowed)
        if value in allowed:
            return enum_cls(value)
        if value.strip() in allowed:
            raise refuse(
                ErrorCode.ENUM_WHITESPACE,
                f"{value!r} has surrounding whitespace; use {value.strip()!r}",
                allowed,
            )
        folded = {a.lower(): a for a in allowed}
        if value.strip().lower() in folded:
            exact = folded[value.strip().lower()]
            raise refuse(
                ErrorCode.ENUM_CASE_MISMATCH,
                f"{value!r} must match the case exactly; use {exact!r}",
                allowed,
            )
        raise refuse(ErrorCode.INVALID_ENUM, f"{value!r} is not one of {allowed}", allowed)

    return validate


def enum_field(enum_cls: type[E], *, optional: bool = False) -> Checked:
    schema = {"type": "string", "enum": [m.value for m in enum_cls]}
    return Checked(_enum_validator(enum_cls, optional), schema)


def _file_name(value: Any) -> str:
    name: str | None = text_validator(255, optional=False)(value)
    assert name is not None
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise refuse(
            ErrorCode.UNSAFE_FILENAME,
            f"{name!r} is not a safe file name: no path separators, '..' or leading dot",
        )
    allowed = sorted(ALLOWED_FILE_EXTENSIONS)
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem.strip() or not extension:
        raise refuse(
            ErrorCode.MISSING_FILE_EXTENSION,
            f"{name!r} has no extension; add one such as .pdf or .docx",
            allowed,
        )
    if extension.lower() not in ALLOWED_FILE_EXTENSIONS:
        raise refuse(
            ErrorCode.UNSUPPORTED_FILE_EXTENSION,
            f".{extension} files are not accepted",
            allowed,
        )
    return name


def file_name() -> Checked:
    schema = {
        "type": "string",
        "minLength": 3,
        "maxLength": 255,
        "description": "Plain file name with an extension, e.g. proposal.pdf",
    }
    return Checked(_file_name, schema)


def _page_int(minimum: int, maximum: int, default: int) -> Any:
    def validate(value: Any) -> int:
        if value is None:
            return default
        if not _is_number(value) or isinstance(value, float):
            raise refuse(ErrorCode.TYPE_MISMATCH, f"expected an integer, got {value!r}")
        if not minimum <= value <= maximum:
            raise refuse(ErrorCode.INVALID_REQUEST, f"must be from {minimum} to {maximum}")
        return int(value)

    return validate


def page_int(minimum: int, maximum: int, default: int) -> Checked:
    schema = {"type": "integer", "minimum": minimum, "maximum": maximum}
    return Checked(_page_int(minimum, maximum, default), schema)


def _search_bound(value: Any) -> float | None:
    if value is None:
        return None
    if not _is_number(value) or (isinstance(value, float) and not math.isfinite(value)):
        raise refuse(ErrorCode.TYPE_MISMATCH, f"expected a JSON number, got {value!r}")
    if not 0 <= value <= 1e12:
        raise refuse(ErrorCode.INVALID_REQUEST, "must be from 0 to 1e12")
    return float(value)


def search_bound() -> Checked:
    """A number bound of a search (min_amount, max_amount): any non-negative number."""
    return Checked(_search_bound, {"type": "number", "minimum": 0, "maximum": 1e12})
