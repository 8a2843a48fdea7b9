"""A structural check of JSON Schemas (Ollama's ``format``), with no dependency.

It refuses what no JSON Schema validator would accept (a ``type`` that names no JSON type,
``properties`` that are not schemas, ``required`` that is not a list of names, ...), so that a
bad ``format`` is a 400 before the job is enqueued, not an error in the runtime. When the
``jsonschema`` package is installed, its meta-schema check runs as well.
"""

from __future__ import annotations

from typing import Any

TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")
# Keywords whose value is one schema, a map of schemas, or a non-empty list of schemas.
ONE_SCHEMA = ("additionalProperties", "items", "not", "contains", "propertyNames", "if", "then", "else",
              "additionalItems", "unevaluatedProperties", "unevaluatedItems")
SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
SCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
NUMBERS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "minContains",
          "maxContains")
STRINGS = ("$ref", "$id", "$schema", "$anchor", "pattern", "format", "title", "description", "contentMediaType")
MAX_DEPTH = 32


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def schema_problem(schema: Any, path: str = "format", depth: int = 0) -> str | None:
    """What makes ``schema`` an invalid JSON Schema (``"<path>: <why>"``), or None if it is valid."""
    if isinstance(schema, bool):
        return None if depth else f"{path}: must be a JSON schema object, not a boolean"
    if not isinstance(schema, dict):
        return f"{path}: a schema must be an object (or true/false), not {type(schema).__name__}"
    if depth > MAX_DEPTH:
        return f"{path}: nested deeper than {MAX_DEPTH} levels"
    problem = _keywords(schema, path)
    if problem:
        return problem
    for key in ONE_SCHEMA:
        if key in schema:
            sub = schema[key]
            if key == "items" and isinstance(sub, list):  # draft 4-7 tuple form
                for i, item in enumerate(sub):
                    if problem := schema_problem(item, f"{path}.items[{i}]", depth + 1):
                        return problem
            elif problem := schema_problem(sub, f"{path}.{key}", depth + 1):
                return problem
    for key in SCHEMA_MAPS:
        if key in schema:
            subs = schema[key]
            if not isinstance(subs, dict):
                return f"{path}.{key}: must be an object mapping names to schemas"
            for name, sub in subs.items():
                if problem := schema_problem(sub, f"{path}.{key}.{name}", depth + 1):
                    return problem
    for key in SCHEMA_LISTS:
        if key in schema:
            subs = schema[key]
            if not isinstance(subs, list) or not subs:
                return f"{path}.{key}: must be a non-empty list of schemas"
            for i, sub in enumerate(subs):
                if problem := schema_problem(sub, f"{path}.{key}[{i}]", depth + 1):
                    return problem
    return None


def _keywords(schema: dict[str, Any], path: str) -> str | None:
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not kinds or not all(isinstance(k, str) and k in TYPES for k in kinds):
            return f"{path}.type: must be one of {', '.join(TYPES)} (or a list of them), not {kind!r:.60}"
    required = schema.get("required")
    if required is not None and not (isinstance(required, list) and all(isinstance(r, str) for r in required)):
        return f"{path}.required: must be a list of property names"
    enum = schema.get("enum")
    if enum is not None and not isinstance(enum, list):
        return f"{path}.enum: must be a list"
    for key in NUMBERS:
        if key in schema and not _number(schema[key]):
            return f"{path}.{key}: must be a number"
    for key in COUNTS:
        if key in schema and not (isinstance(schema[key], int) and not isinstance(schema[key], bool)
                                  and schema[key] >= 0):
            return f"{path}.{key}: must be a non-negative integer"
    for key in STRINGS:
        if key in schema and not isinstance(schema[key], str):
            return f"{path}.{key}: must be a string"
    return None


def check_schema(schema: Any) -> str | None:
    """:func:`schema_problem`, then the ``jsonschema`` package's meta-schema check when it is installed."""
    problem = schema_problem(schema)
    if problem is not None:
        return problem
    try:
        import jsonschema
    except ImportError:
        return None
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "".join(f"[{p!r}]" for p in exc.path)
        return f"format{where}: {exc.message}"
    return None
