"""Wire types shared by every resource: the error envelope and constrained
scalars whose violations read as one clear message."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, PlainValidator
from pydantic_core import PydanticCustomError

Auto = Literal["auto"]


class WireModel(BaseModel):
    """Response objects: built by services, never parsed from clients."""

    model_config = ConfigDict(extra="forbid")


class RequestModel(BaseModel):
    """Request bodies on OpenAI routes: unknown fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")


class ClosedRequestModel(BaseModel):
    """Request objects whose every key matters (hyperparameters): a typo is an error."""

    model_config = ConfigDict(extra="forbid")


def _invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_value", message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def int_in_range(low: int, high: int, *, auto: bool = False, nullable: bool = False) -> Any:
    """An integer in [low, high] (or the string "auto"); bools and floats are refused."""
    expected = f"an integer between {low} and {high}" + (' or "auto"' if auto else "")

    def check(value: Any) -> Any:
        if (auto and value == "auto") or (nullable and value is None):
            return value
        if not _is_int(value) or not low <= value <= high:
            raise _invalid(f"must be {expected}, got {value!r}")
        return value

    return Annotated[int | Auto if auto else int, PlainValidator(check)]


def number_above(
    low: float, high: float | None = None, *, auto: bool = False, nullable: bool = False
) -> Any:
    """A number > low (and <= high when given), or "auto"."""
    expected = f"a number greater than {low:g}" + (f" and at most {high:g}" if high else "")
    expected += ' or "auto"' if auto else ""

    def check(value: Any) -> Any:
        if (auto and value == "auto") or (nullable and value is None):
            return value
        if not _is_number(value) or value <= low or (high is not None and value > high):
            raise _invalid(f"must be {expected}, got {value!r}")
        return float(value)

    return Annotated[float | Auto if auto else float, PlainValidator(check)]


def number_between(low: float, high: float, *, nullable: bool = False) -> Any:
    """A number in [low, high]."""

    def check(value: Any) -> Any:
        if nullable and value is None:
            return None
        if not _is_number(value) or not low <= value <= high:
            raise _invalid(f"must be a number between {low:g} and {high:g}, got {value!r}")
        return float(value)

    return Annotated[float, PlainValidator(check)]


def fraction(*, nullable: bool = False) -> Any:
    """A number in [0, 1)."""

    def check(value: Any) -> Any:
        if nullable and value is None:
            return None
        if not _is_number(value) or not 0 <= value < 1:
            raise _invalid(f"must be a number in [0, 1), got {value!r}")
        return float(value)

    return Annotated[float, PlainValidator(check)]
