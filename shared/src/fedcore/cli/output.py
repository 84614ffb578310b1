"""Human output (aligned tables, ``key: value`` records) and machine output (``--json``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from fedcore.cli.client import ApiError, Refused

Column = tuple[str, str]  # (header, key; dotted keys reach into nested objects)


def _get(record: Mapping[str, Any], key: str) -> Any:
    value: Any = record
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def render(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(render(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def print_json(data: Any, out: TextIO | None = None) -> None:
    print(json.dumps(data, indent=2, sort_keys=True), file=out or sys.stdout)


def print_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], out: TextIO | None = None
) -> None:
    out = out or sys.stdout
    cells = [[render(_get(row, key)) for _, key in columns] for row in rows]
    widths = [
        max([len(header), *(len(line[i]) for line in cells)])
        for i, (header, _) in enumerate(columns)
    ]
    print(
        "  ".join(h.ljust(w) for (h, _), w in zip(columns, widths, strict=True)).rstrip(), file=out
    )
    for line in cells:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(), file=out)
    if not rows:
        print("(none)", file=out)


def print_record(
    record: Mapping[str, Any], fields: Sequence[Column] | None = None, out: TextIO | None = None
) -> None:
    out = out or sys.stdout
    pairs = fields or [(key.replace("_", " "), key) for key in record]
    width = max((len(label) for label, _ in pairs), default=0)
    for label, key in pairs:
        print(f"{(label + ':').ljust(width + 1)} {render(_get(record, key))}", file=out)


def emit(data: Any, as_json: bool, human: Any) -> None:
    """``--json`` prints the API's answer as is; otherwise ``human(data)`` prints it."""
    if as_json:
        print_json(data)
    else:
        human(data)


def print_page_hint(page: Mapping[str, Any]) -> None:
    cursor = page.get("next_cursor")
    if cursor:
        print(f"(more: --cursor {cursor})")


def print_error(error: Exception, as_json: bool) -> None:
    if isinstance(error, ApiError):
        if as_json and error.body is not None:
            print_json(error.body)
        suffix = f" (request {error.request_id})" if error.request_id else ""
        print(f"error: {error.code}: {error.message}{suffix}", file=sys.stderr)
        for field in error.fields:  # which input was wrong (422): its path and the rule
            print(f"  {field}", file=sys.stderr)
    elif isinstance(error, Refused):
        if as_json:
            print_json({"error": {"code": error.code, "message": error.message}})
        print(f"error: {error.code}: {error.message}", file=sys.stderr)
    else:
        print(f"error: {error}", file=sys.stderr)
