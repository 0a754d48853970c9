"""Delete everything linked to a DynamoDB item when its TTL expires or its owner asks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deletion-reconciler")  # pyproject.toml is the one place the version is written
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"
