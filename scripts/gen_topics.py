"""Regenerate topics/ (AsyncAPI document + JSON Schemas) from the pydantic models."""

from pathlib import Path

from nexus_streams.contract import write

if __name__ == "__main__":
    for path in write(Path(__file__).resolve().parents[1] / "topics"):
        print(path)
