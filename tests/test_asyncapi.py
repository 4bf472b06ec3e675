"""topics/asyncapi.yaml is valid AsyncAPI as the official parser reads it (`@asyncapi/parser`, the
one the AsyncAPI CLI runs), not only as our own generator sees it.

The parser is a Node package pinned in scripts/asyncapi/ (`make test` runs `npm ci` there). A
missing `node` or parser fails the test: it is never skipped."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PARSER_DIR = REPO / "scripts" / "asyncapi"
DOCUMENT = REPO / "topics" / "asyncapi.yaml"


def official_parser_report(document: Path) -> dict[str, Any]:
    """{"parser": version, "diagnostics": [...]}, as scripts/asyncapi/validate.mjs prints them."""
    node = shutil.which("node")
    assert node, "node is not on the PATH: install Node.js 18 or newer"
    assert (PARSER_DIR / "node_modules" / "@asyncapi" / "parser").is_dir(), (
        "the AsyncAPI parser is not installed: run `make asyncapi-install` (npm ci in scripts/asyncapi)"
    )
    done = subprocess.run(
        [node, str(PARSER_DIR / "validate.mjs"), str(document)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode in (0, 1), f"validate.mjs failed ({done.returncode}):\n{done.stderr}"
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_asyncapi_document__official_parser_reports_no_errors() -> None:
    report = official_parser_report(DOCUMENT)
    errors = [d for d in report["diagnostics"] if d["severity"] == "error"]
    assert errors == [], f"@asyncapi/parser {report['parser']} rejects topics/asyncapi.yaml:\n" + "\n".join(
        f"  {d['code']} at {d['file']}#/{d['path']} (line {d['line']}): {d['message']}" for d in errors
    )
