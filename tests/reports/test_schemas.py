"""The JSON Schemas are generated from the dataclasses they describe (``reports/schemas.py``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema
import pytest

from tests.reports.events_builder import collect, failing_matrix_run
from vmrunner.reports.insights import INSIGHTS_SCHEMA, Insights, Lesson, Suggestion
from vmrunner.reports.results import RUN_RESULT_SCHEMA, JobResult, StepResult
from vmrunner.reports.schemas import (
    COUNT,
    JSON_OMIT,
    dataclass_schema,
    json_value,
    record_json,
    type_schema,
)


@dataclass(frozen=True)
class _Inner:
    size: int = field(metadata=COUNT)


@dataclass(frozen=True)
class _Record:
    name: str
    kind: Literal["a", "b"]
    ratio: float | None
    inner: _Inner | None
    items: tuple[_Inner, ...]
    labels: Mapping[str, str]
    anything: Mapping[str, Any]
    hidden: str = field(default="", metadata=JSON_OMIT)
    renamed: bool = field(default=False, metadata={"json": "flag"})


def test_a_dataclass_becomes_a_closed_object_of_its_fields() -> None:
    inner = {"type": "object", "properties": {"size": {"type": "integer", "minimum": 0}},
             "required": ["size"], "additionalProperties": False}
    assert dataclass_schema(_Record) == {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "kind": {"enum": ["a", "b"]},
            "ratio": {"type": ["number", "null"]},
            "inner": {"anyOf": [inner, {"type": "null"}]},
            "items": {"type": "array", "items": inner},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "anything": {"type": "object"},
            "flag": {"type": "boolean"},
        },
        "required": ["anything", "flag", "inner", "items", "kind", "labels", "name", "ratio"],
        "additionalProperties": False,
    }


def test_the_json_form_is_made_from_the_same_fields_as_the_schema() -> None:
    record = _Record(
        "x", "b", None, _Inner(2), (_Inner(0), _Inner(1)), {"k": "v"}, {"deep": [1, {"a": None}]},
        hidden="not in the JSON", renamed=True,
    )
    data = record_json(record, extra={"name": "computed"})
    assert data == {
        "name": "computed", "kind": "b", "ratio": None, "inner": {"size": 2},
        "items": [{"size": 0}, {"size": 1}], "labels": {"k": "v"},
        "anything": {"deep": [1, {"a": None}]}, "flag": True,
    }
    jsonschema.validate(data, dataclass_schema(_Record))
    assert json.loads(json.dumps(data)) == data  # plain data only
    with pytest.raises(TypeError):
        json_value({1, 2})


def test_types_without_a_schema_are_refused() -> None:
    with pytest.raises(TypeError):
        type_schema(int | str)
    with pytest.raises(TypeError):
        type_schema(list[int])


@pytest.mark.parametrize("kind", [StepResult, JobResult])
def test_every_field_of_a_result_is_in_the_run_result_schema(kind: type[Any]) -> None:
    jobs = RUN_RESULT_SCHEMA["properties"]["jobs"]["items"]
    schema = jobs if kind is JobResult else jobs["properties"]["steps"]["items"]
    assert set(schema["properties"]) == set(kind.__dataclass_fields__)


def test_the_generated_schemas_accept_real_results_and_insights() -> None:
    data = collect(failing_matrix_run()).to_json()
    jsonschema.validate(data, RUN_RESULT_SCHEMA)  # every key of the schema, and no other
    assert json.loads(json.dumps(data)) == data
    lesson = Lesson(1, "octo/app", "make", "boom", 3, 1.0, 2.0, "sig")
    suggestion = Suggestion("cache", "cache it", 0.5, "3 runs", paths=("~/.npm",))
    jsonschema.validate(Insights((lesson,), (suggestion,)).to_json(), INSIGHTS_SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            Insights((), (Suggestion("cache", "x", 1.5, "y"),)).to_json(), INSIGHTS_SCHEMA
        )
