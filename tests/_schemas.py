"""The one test helper for published output schemas (docs/schemas, defined in item/outputs.py).

    from tests._schemas import assert_valid
    assert_valid(json.loads(result.stdout), "cli_predict")

A new command with ``--json`` (or a new API route) adds its schema to ``item.outputs.DOCUMENTS``,
regenerates docs/schemas (``python -m item.outputs docs/schemas``) and calls this in its test.
"""

import jsonschema

from item.outputs import validate


def assert_valid(doc, name: str):
    """Fail the test with jsonschema's message (path and reason) when ``doc`` does not fit ``name``."""
    try:
        validate(doc, name)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise AssertionError(f"{name}: {where}: {exc.message}") from None
    return doc
