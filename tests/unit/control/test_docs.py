"""docs/CONTROL.md documents every op, each of its arguments, and every error type."""

import os
import re

from appliance.control.protocol import ERROR_TYPES
from appliance.control.server import OPS

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "..", "docs", "CONTROL.md")


def sections() -> dict[str, str]:
    text = open(DOC).read()
    parts = re.split(r"^### `(\w+)`$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_op_and_argument_is_documented():
    docs = sections()
    assert set(docs) == set(OPS)
    for op, (_, args) in OPS.items():
        for a in args:
            assert f"`{a.name}`" in docs[op], f"{op}: argument {a.name}"
            if a.required:
                assert re.search(rf"`{a.name}`[^`]*\*\*required", docs[op]), f"{op}: {a.name}"


def test_every_error_type_is_documented():
    text = open(DOC).read()
    for name in ERROR_TYPES:
        assert f"| `{name}` |" in text, name
