"""The base of every config section: unknown keys, booleans given for numbers and non-finite
numbers are errors, never silently taken (YAML's `true` would otherwise be the number 1, and
`.inf` a learning rate that trains to NaN)."""
from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

_NUMBERS = {int, float, Optional[int], Optional[float], Union[int, float]}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation in _NUMBERS:
            raise ValueError(f"expected a number, got {str(value).lower()}")
        return value
