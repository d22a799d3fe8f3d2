"""A checker for the subset of JSON Schema the gateway's documents use (the OpenAPI schema of
its HTTP routes, the AsyncAPI document of its WebSocket protocol), for the tests that hold
real answers to them: no jsonschema library is installed. It fails on any keyword it does not
know rather than passing it, so a checker that says yes to everything cannot hide here."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

Json = Any

# Keywords that say nothing about which values are valid (``format`` is an annotation in JSON
# Schema unless a validator opts in; "binary" asserts nothing JSON could hold).
_ANNOTATIONS: Final = frozenset(
    {"title", "description", "default", "examples", "deprecated", "format"}
)
_TYPES: Final[Mapping[str, Any]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def resolve(document: Json, ref: str) -> Json:
    assert ref.startswith("#/"), f"only local references are expected: {ref}"
    target = document
    for part in ref[2:].split("/"):
        assert isinstance(target, dict), f"{ref} points at nothing"
        assert part in target, f"{ref} points at nothing"
        target = target[part]
    return target


def _base64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error:
        return False
    return True


def _same_kind(a: Json, b: Json) -> bool:
    return isinstance(a, bool) == isinstance(b, bool)


def _bounds(keyword: str, bound: float, value: Json) -> bool:
    """Whether ``value`` is within a numeric or length bound (values it does not apply to
    are within it)."""
    measure: float
    if keyword in ("minLength", "maxLength"):
        if not isinstance(value, str):
            return True
        measure = len(value)
    elif _TYPES["number"](value):
        measure = value
    else:
        return True
    return {
        "minLength": measure >= bound,
        "maxLength": measure <= bound,
        "minimum": measure >= bound,
        "maximum": measure <= bound,
        "exclusiveMinimum": measure > bound,
        "exclusiveMaximum": measure < bound,
    }[keyword]


_BOUNDS: Final = frozenset(
    {"minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
)


def problems(document: Json, schema: Json, value: Json, at: str = "$") -> Iterator[str]:
    """Why ``value`` does not match ``schema`` (none: it does). A keyword the checker does
    not know fails the check rather than being skipped."""
    if "$ref" in schema:
        yield from problems(document, resolve(document, schema["$ref"]), value, at)
        return
    for keyword, expected in schema.items():
        if keyword in _ANNOTATIONS or keyword in ("properties", "required"):
            continue
        if keyword == "type":
            types = expected if isinstance(expected, list) else [expected]
            if not any(_TYPES[t](value) for t in types):
                yield f"{at}: {value!r} is not of type {expected}"
                return
        elif keyword == "enum":
            # Python has True == 1; JSON Schema does not.
            if not any(e == value and _same_kind(e, value) for e in expected):
                yield f"{at}: {value!r} is not one of {expected}"
        elif keyword == "const":
            if value != expected or not _same_kind(expected, value):
                yield f"{at}: {value!r} is not {expected!r}"
        elif keyword in ("anyOf", "oneOf"):
            matching = [s for s in expected if not any(problems(document, s, value, at))]
            if not matching or (keyword == "oneOf" and len(matching) > 1):
                yield f"{at}: {value!r} matches {len(matching)} of {keyword} {expected}"
        elif keyword in _BOUNDS:
            if not _bounds(keyword, expected, value):
                yield f"{at}: {value!r} is out of {keyword} {expected}"
        elif keyword == "pattern":
            if isinstance(value, str) and re.search(expected, value) is None:
                yield f"{at}: {value!r} does not match {expected!r}"
        elif keyword == "contentEncoding":
            assert expected == "base64", f"the checker knows only base64, not {expected}"
            if isinstance(value, str) and not _base64(value):
                yield f"{at}: {value!r} is not base64"
        elif keyword == "items":
            if isinstance(value, list):
                for index, item in enumerate(value):
                    yield from problems(document, expected, item, f"{at}[{index}]")
        elif keyword == "additionalProperties":
            if isinstance(value, dict):
                known = schema.get("properties", {})
                for name, item in value.items():
                    if name in known:
                        continue
                    if expected is False:
                        yield f"{at}: {name!r} is not allowed"
                    elif isinstance(expected, dict):
                        yield from problems(document, expected, item, f"{at}.{name}")
        else:
            raise AssertionError(f"the checker does not know the keyword {keyword!r} at {at}")
    if isinstance(value, dict):
        for name in schema.get("required", ()):
            if name not in value:
                yield f"{at}: {name!r} is missing"
        for name, item_schema in schema.get("properties", {}).items():
            if name in value:
                yield from problems(document, item_schema, value[name], f"{at}.{name}")


def references(value: Json) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)
