"""The topology of a GraphIndex in C, and the search of algorithms.find_path on it
(_pathcore.c); optional: see index.TOPOLOGY and algorithms.NATIVE."""

from collections.abc import Callable
from typing import NoReturn

from nexus_streams.domain.algorithms import Path
from nexus_streams.domain.relationships import RelationshipKey, RelationType

class Topology:
    """The graph of one GraphIndex: node numbers, names and entries as the index keeps them."""

    def __init__(self) -> None: ...
    def __len__(self) -> int: ...
    def __contains__(self, name: object, /) -> bool: ...
    def __getitem__(self, name: str, /) -> int: ...
    def get(self, name: str, /) -> int | None: ...
    def add(self, source: int, source_name: str, target: int, target_name: str, code: int, /) -> None: ...
    def remove(self, source: int, target: int, code: int, /) -> bool: ...
    def release(self, node: int, /) -> None: ...
    def node_of(self, name: str, /) -> int | None: ...
    def entries(self, node: int, /) -> tuple[str, list[int], list[int]] | None: ...

def configure(
    path: type[Path],
    key: type[RelationshipKey],
    types_by_code: tuple[RelationType, ...],
    over_limit: Callable[[int, int], NoReturn],
    /,
) -> None: ...
def find_path(
    topology: Topology,
    source: str,
    target: str,
    max_depth: int,
    out_mask: int,
    in_mask: int,
    visit_limit: int,
    /,
) -> Path | None: ...
