"""The Exam Results Released model matches the specification field for field."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas.webhook import MAX_ID_CHARS, MAX_TIMESTAMP_CHARS, ExamResultsReleased
from tests.support.webhooks import SAMPLE, results_released

# The platform's specification of the body (shared/seeds/000_f749086e8c95ae3b.txt), kept with the tests.
SEED = Path(__file__).resolve().parents[1] / "data" / "exam-results-released.spec.txt"


def wire_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key path of a JSON value, with list items as `[]`."""
    paths: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.add(path)
            paths |= wire_paths(item, path)
    elif isinstance(value, list):
        for item in value:
            paths |= wire_paths(item, f"{prefix}[]")
    return paths


def seed_paths() -> set[str]:
    """Key paths declared in the seed's TypeScript interface (index signatures excluded)."""
    paths: set[str] = set()
    stack: list[str] = []
    for line in SEED.read_text().splitlines():
        line = line.strip()
        match = re.match(r'^"?([\w-]+)"?\??: (.*)$', line)
        if match:
            name, rest = match.groups()
            path = ".".join([*stack, name])
            paths.add(path)
            if rest.startswith("{"):
                stack.append(name)
        elif line.startswith("}[]"):
            # The block was an array of objects: its fields live under `name[]`.
            block = ".".join(stack)
            paths = {f"{block}[]{p[len(block) :]}" if p.startswith(block + ".") else p for p in paths}
            stack.pop()
        elif line.startswith("}") and stack:
            stack.pop()
    return paths


def model_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Key paths the pydantic model declares, by wire name."""
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        wire = field.alias or name
        path = f"{prefix}.{wire}" if prefix else wire
        paths.add(path)
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        if getattr(annotation, "__origin__", None) is list:
            path = f"{path}[]"  # fields of list items live under `name[]`
        for sub in (annotation, *args):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                paths |= model_paths(sub, path)
    return paths


def test_the_model_declares_exactly_the_fields_of_the_seed() -> None:
    # customAttributes is an index signature: its keys are data, not fields.
    assert model_paths(ExamResultsReleased) == seed_paths()


def test_the_sample_body_has_every_seed_field() -> None:
    sample = {p for p in wire_paths(SAMPLE) if not p.startswith("user.customAttributes.")}
    assert sample == seed_paths()


def test_every_seed_field_round_trips_unchanged() -> None:
    model = ExamResultsReleased.model_validate(SAMPLE)
    assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == SAMPLE
    assert json.dumps(model.model_dump(by_alias=True, exclude_unset=True, mode="json")) == json.dumps(SAMPLE)


def test_unknown_extra_fields_are_accepted_and_survive_a_round_trip() -> None:
    body = results_released()
    body["newTopLevel"] = {"anything": [1, 2]}
    body["attempt"]["state"]["newFlag"] = True
    body["exam"]["attr"]["brand-new-attr"] = "x"
    model = ExamResultsReleased.model_validate(body)
    assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == body


def test_optional_sub_portal_and_instructions_may_be_absent() -> None:
    body = results_released()
    del body["user"]["subPortalId"]
    del body["attempt"]["state"]["instructions"]
    model = ExamResultsReleased.model_validate(body)
    assert model.user.sub_portal_id is None
    assert model.attempt.state.instructions is None


@pytest.mark.parametrize("value", ["text", 7, 2.5, True, None])
def test_custom_attributes_take_strings_numbers_booleans_and_null(value: object) -> None:
    body = results_released()
    body["user"]["customAttributes"] = {"k": value}
    model = ExamResultsReleased.model_validate(body)
    assert model.user.custom_attributes == {"k": value}
    assert type(model.user.custom_attributes["k"]) is type(value)


def test_custom_attributes_refuse_nested_objects() -> None:
    body = results_released()
    body["user"]["customAttributes"] = {"k": {"nested": 1}}
    with pytest.raises(ValidationError):
        ExamResultsReleased.model_validate(body)


def test_proctor_status_may_be_null_or_a_string() -> None:
    body = results_released()
    assert ExamResultsReleased.model_validate(body).attempt.proctor_status is None
    body["attempt"]["proctorStatus"] = "reviewed"
    assert ExamResultsReleased.model_validate(body).attempt.proctor_status == "reviewed"


def test_hyphenated_exam_attributes_have_python_names_and_keep_their_wire_names() -> None:
    model = ExamResultsReleased.model_validate(results_released(publish_grade=False))
    assert model.exam.attr.publish_exam_grade is False
    assert model.exam.attr.exam_group_id == "grp_acc201"
    dumped = model.model_dump(by_alias=True)["exam"]["attr"]
    assert {"exam-weight", "publish-exam-grade", "qualification_name", "cohort_number"} <= dumped.keys()


def test_integers_stay_integers() -> None:
    model = ExamResultsReleased.model_validate(SAMPLE)
    assert type(model.attempt.marks.max_points) is int
    assert type(model.attempt.score) is float


def test_a_missing_required_field_is_a_validation_error() -> None:
    body = results_released()
    del body["attempt"]["grade"]
    with pytest.raises(ValidationError, match=r"attempt\.grade"):
        ExamResultsReleased.model_validate(body)


def test_a_release_time_that_is_not_a_timestamp_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="releasedAt"):
        ExamResultsReleased.model_validate(results_released(released_at="yesterday"))


# Every id of the body that ends up in a key, a CloudEvents subject or id, or a derived field.
ID_PATHS = [
    "id",
    "user.id",
    "user.subPortalId",
    "portal.id",
    "attempt.id",
    "attempt.marker.id",
    "attempt.assignedModeratingMarkers.0.id",
    "test.id",
    "exam.id",
    "exam.userGroup.id",
    "exam.attr.exam-group-id",
]
TIMESTAMP_PATHS = ["meta.timestamp", "attempt.timeCompleted", "attempt.audit.releasedAt"]


def with_value(path: str, value: str) -> dict[str, Any]:
    """The sample body with the value at a dotted wire path (list indexes as numbers) replaced."""
    body = results_released()
    *parents, last = path.split(".")
    node: Any = body
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return body


def errors_of(body: dict[str, Any]) -> list[Any]:
    with pytest.raises(ValidationError) as caught:
        ExamResultsReleased.model_validate(body)
    return caught.value.errors(include_input=False)


@pytest.mark.parametrize("path", ID_PATHS)
def test_an_id_longer_than_255_characters_is_a_validation_error_naming_the_field(path: str) -> None:
    [error] = errors_of(with_value(path, "i" * (MAX_ID_CHARS + 1)))

    assert ".".join(str(part) for part in error["loc"]) == path
    assert error["msg"] == "String should have at most 255 characters"
    assert MAX_ID_CHARS == 255


@pytest.mark.parametrize("path", ID_PATHS)
def test_an_id_of_255_characters_is_accepted(path: str) -> None:
    ExamResultsReleased.model_validate(with_value(path, "i" * MAX_ID_CHARS))


@pytest.mark.parametrize("path", TIMESTAMP_PATHS)
def test_a_timestamp_longer_than_64_characters_is_a_validation_error(path: str) -> None:
    [error] = errors_of(with_value(path, "2026-06-14T09:30:00." + "0" * MAX_TIMESTAMP_CHARS + "Z"))

    assert ".".join(str(part) for part in error["loc"]) == path
