"""The C search of algorithms.find_path (_pathcore.c); optional: see algorithms.NATIVE."""

from array import array
from collections.abc import Callable
from typing import NoReturn

from nexus_streams.domain.algorithms import Path
from nexus_streams.domain.relationships import RelationshipKey, RelationType

def configure(
    path: type[Path],
    key: type[RelationshipKey],
    types_by_code: tuple[RelationType, ...],
    over_limit: Callable[[int, int], NoReturn],
    /,
) -> None: ...
def find_path(
    tables: tuple[dict[str, int], list[str | None], list[array[int] | None], list[array[int] | None]],
    source: str,
    target: str,
    max_depth: int,
    out_mask: int,
    in_mask: int,
    visit_limit: int,
    /,
) -> Path | None: ...
