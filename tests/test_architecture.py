"""The domain stays pure: no Faust, Kafka, Redis or Prometheus import under nexus_streams/domain,
nor in the modules the domain logic and contract are built from."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nexus_streams"
IO_LIBRARIES = {"faust", "mode", "aiokafka", "kafka", "redis", "prometheus_client"}
PURE = sorted(PACKAGE.glob("domain/**/*.py")) + [
    PACKAGE / name for name in ("messages.py", "codec.py", "service.py", "topics.py", "contract.py")
]


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_architecture__pure_module_imports_no_io_library(path: Path) -> None:
    assert not imported_roots(path) & IO_LIBRARIES


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("domain/**/*.py")), ids=lambda p: p.name)
def test_architecture__domain_imports_only_domain(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nexus_streams"):
            assert node.module.startswith("nexus_streams.domain"), f"{path.name} imports {node.module}"
