"""A record's JSON form and its JSON Schema, both derived from its dataclass.

A record is defined once, as a dataclass. ``record_json`` makes its JSON form from its fields
(in field order; nested dataclasses by their own ``to_json`` if they have one, else the same
way; mappings become objects, tuples arrays). Its schema follows from its fields' types:

- ``str``, ``int``, ``float``, ``bool`` → ``string``, ``integer``, ``number``, ``boolean``;
  ``Literal[...]`` → ``enum``; ``X | None`` → ``X`` or ``null``;
- ``tuple[X, ...]`` → an array of ``X``; ``Mapping[str, X]`` → an object of ``X`` values
  (``Any``: any object); a dataclass → an object whose every property is required and no other
  allowed.

A field's ``metadata`` refines it: ``JSON_OMIT`` leaves it out of the JSON, ``{"json": "name"}``
gives it another key, and JSON Schema keywords (``minimum``, ``maximum``) are copied into its
schema. Values that are computed (properties, constants) are passed as ``extra`` to both.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

#: Field metadata: the field is not part of the JSON.
JSON_OMIT: Mapping[str, Any] = {"json": None}
#: Field metadata: a count (an integer, at least 0).
COUNT: Mapping[str, Any] = {"minimum": 0}

_PRIMITIVES: dict[type, str] = {str: "string", bool: "boolean", int: "integer", float: "number"}
_KEYWORDS = ("minimum", "maximum")


def obj(properties: Mapping[str, Any]) -> dict[str, Any]:
    """An object schema: exactly these properties, all required."""
    return {
        "type": "object",
        "properties": dict(properties),
        "required": sorted(properties),
        "additionalProperties": False,
    }


def json_keys(kind: type[Any]) -> list[tuple[str, str]]:
    """``(field name, JSON key)`` of each of ``kind``'s fields that is part of its JSON."""
    keys = ((item.name, item.metadata.get("json", item.name)) for item in dataclasses.fields(kind))
    return [(name, key) for name, key in keys if key is not None]


def record_json(record: Any, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON form of the dataclass instance ``record``: its fields (as their metadata says),
    then ``extra``; what ``dataclass_schema(type(record), ...)`` describes."""
    data = {key: json_value(getattr(record, name)) for name, key in json_keys(type(record))}
    data.update(extra or {})
    return data


def json_value(value: Any) -> Any:
    """Plain JSON data of a field's value (see ``record_json``)."""
    if value is None or isinstance(value, str | int | float):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_json = getattr(value, "to_json", None)
        return to_json() if to_json is not None else record_json(value)
    if isinstance(value, Mapping):
        return {key: json_value(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [json_value(item) for item in value]
    raise TypeError(f"no JSON form for {value!r}")


def dataclass_schema(kind: type[Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The schema of ``kind``'s JSON form: its fields (as their metadata says) plus ``extra``."""
    hints = get_type_hints(kind)
    metadata = {item.name: item.metadata for item in dataclasses.fields(kind)}
    properties: dict[str, Any] = {}
    for name, key in json_keys(kind):
        schema = type_schema(hints[name])
        schema.update({word: metadata[name][word] for word in _KEYWORDS if word in metadata[name]})
        properties[key] = schema
    properties.update(extra or {})
    return obj(properties)


def type_schema(hint: Any) -> dict[str, Any]:
    """The schema of one annotated type (see the module's docstring for what is understood)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return {}
    if hint in _PRIMITIVES:
        return {"type": _PRIMITIVES[hint]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (Union, types.UnionType):
        rest = [arg for arg in args if arg is not type(None)]
        if len(rest) != 1 or len(rest) == len(args):
            raise TypeError(f"only 'X | None' unions have a schema here, not {hint}")
        inner = type_schema(rest[0])
        if set(inner) == {"type"} and isinstance(inner["type"], str):
            return {"type": [inner["type"], "null"]}
        if set(inner) == {"enum"}:
            return {"enum": [*inner["enum"], None]}
        return {"anyOf": [inner, {"type": "null"}]}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return {"type": "array", "items": type_schema(args[0])}
    if origin in (Mapping, dict) and args and args[0] is str:
        values = type_schema(args[1])
        return {"type": "object", **({"additionalProperties": values} if values else {})}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return dataclass_schema(hint)
    raise TypeError(f"no JSON schema for {hint!r}")
