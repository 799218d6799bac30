"""One way from the gateway's JSON to the SDK's dataclasses: `parse(cls, data)` reads each field
by its type hint. Lenient on purpose, so that an older client keeps working against a newer
gateway: a field left out (or null) takes its default, or the empty value of its type when it
has none; fields the gateway adds are ignored (and kept in `raw`)."""

from __future__ import annotations

import dataclasses
import types
import typing
from decimal import Decimal
from functools import cache
from typing import Any, TypeVar, Union

T = TypeVar("T")
_EMPTY: dict[Any, Any] = {str: "", int: 0, float: 0.0, Decimal: Decimal(0), bool: False}


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def parse(cls: type[T], data: Any) -> T:
    """`cls` (a dataclass) from the JSON object `data`; its `raw` field, if any, keeps `data`."""
    data = data if isinstance(data, dict) else {}
    hints = _hints(typing.cast(type, cls))
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        hint = hints[f.name]
        if f.name == "raw":
            values["raw"] = data
        elif data.get(f.name) is not None:
            values[f.name] = _value(hint, data[f.name])
        elif _optional(hint):
            values[f.name] = None
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            values[f.name] = _empty(hint)
    return cls(**values)


def _optional(hint: Any) -> bool:
    return _is_union(hint) and type(None) in typing.get_args(hint)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def _empty(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        return []
    if origin is dict:
        return {}
    if dataclasses.is_dataclass(hint):
        return parse(hint, {})  # type: ignore[arg-type]
    return _EMPTY.get(hint)


def _value(hint: Any, value: Any) -> Any:
    """`value` as `hint` says: a dataclass, a list or dict of them, or a scalar."""
    if hint is Any:
        return value
    if _is_union(hint):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        return _value(options[0], value)
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return [_value(item, v) for v in value] if isinstance(value, list) else []
    if origin is dict:
        return value if isinstance(value, dict) else None
    if dataclasses.is_dataclass(hint):
        return parse(hint, value)  # type: ignore[arg-type]
    if hint is Decimal:  # money and seconds come as decimal strings ("0.000200"): kept exact
        return Decimal(str(value))
    if hint is str and isinstance(value, dict):  # an error object where a message is expected
        return str(value.get("message") or value)
    return hint(value)
