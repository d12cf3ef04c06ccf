"""modelarts-otel-receiver: Huawei Cloud ModelArts logs, events and service updates as OTLP log records."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("modelarts-otel-receiver")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
