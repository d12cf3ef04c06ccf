"""The ModelArts API as the sources see it: the shared connection, with project paths filled in.

The receiver builds the ``modelarts`` connection's client (signing, rate limit, retries); this
module only adds what is ModelArts' own: the project id in every path, the throttling codes the
gateway answers with, and the resource attributes every ModelArts record is sent under.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, Field

from collector_plugin.api import ApiClient, Attributes, LinkAnswer, SourceConfig, SourceContext

M = TypeVar("M", bound=BaseModel)

CONNECTION = "modelarts"
# The API gateway's flow control and ModelArts' own "too many requests": worth a retry.
RETRYABLE_CODES = frozenset({"APIG.0308", "ModelArts.6101"})
SERVICE_TRAINING = "modelarts-training"
SERVICE_INFERENCE = "modelarts-inference"


class ModelArtsClient:
    """The shared :class:`ApiClient` of one project: ``path()`` fills ``{project_id}``."""

    def __init__(self, api: ApiClient, project_id: str) -> None:
        self.api = api
        self.project_id = project_id

    @classmethod
    def connect(cls, base_url: str, project_id: str, **options: Any) -> ModelArtsClient:
        """A client of its own (tests, one-off commands); ``options`` go to :class:`ApiClient`."""
        options.setdefault("retryable_codes", RETRYABLE_CODES)
        return cls(ApiClient(base_url, **options), project_id)

    @property
    def metrics(self) -> Any:
        return self.api.metrics

    def path(self, template: str, **params: str | int) -> str:
        """Fill ``{project_id}`` and the given path parameters (URL-quoted)."""
        values = {k: quote(str(v), safe="") for k, v in params.items()}
        return template.format(project_id=quote(self.project_id, safe=""), **values)

    async def get_model(
        self,
        path: str,
        model: type[M],
        *,
        endpoint: str,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> M:
        return await self.api.get_model(path, model, endpoint=endpoint, params=params, headers=headers)

    async def post_model(self, path: str, body: Any, model: type[M], *, endpoint: str) -> M:
        return await self.api.post_model(path, body, model, endpoint=endpoint)

    async def request_json(self, method: str, path: str, *, endpoint: str, **kwargs: Any) -> Any:
        return await self.api.request_json(method, path, endpoint=endpoint, **kwargs)

    def stream_obs(self, url: str, start: int, end: int | None = None) -> AbstractAsyncContextManager[LinkAnswer]:
        return self.api.stream_obs(url, start, end)

    async def aclose(self) -> None:
        await self.api.aclose()

    async def __aenter__(self) -> ModelArtsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def modelarts_client(context: SourceContext) -> ModelArtsClient:
    """The project client over the receiver's ``modelarts`` connection."""
    connection = context.connection(CONNECTION)
    return ModelArtsClient(connection.client, connection.settings.get("project_id", ""))


class StreamsConfig(SourceConfig):
    """How a ModelArts source's records map to Loki streams."""

    streams: Literal["per_log", "per_service"] = Field(
        default="per_log",
        description="per_log: each log (a task's log, a job's events, a service's history) is its own "
        "stream, named by service.instance.id; per_service: one stream per service.name and region.",
    )


def modelarts_resource(context: SourceContext, service: str, instance: str = "") -> Attributes:
    """The resource of ModelArts records: ``service.name``, the cloud attributes, the log's instance.

    Loki indexes resource attributes as labels, so only ``service.instance.id`` (one value per log,
    ``""`` for one stream per service) varies; job, task and service details are record attributes.
    """
    settings = context.connection(CONNECTION).settings
    return context.resource(
        {
            "service.name": service,
            "service.instance.id": instance,
            "cloud.provider": "huawei_cloud",
            "cloud.platform": "huawei_cloud_modelarts",
            "cloud.region": settings.get("region", ""),
            "modelarts.project.id": settings.get("project_id", ""),
        }
    )


def stream_resource(context: SourceContext, config: StreamsConfig, service: str, instance: str) -> Attributes:
    """The resource of one log's records, as ``streams`` asks (its own stream, or its service's)."""
    return modelarts_resource(context, service, instance if config.streams == "per_log" else "")


__all__ = [
    "CONNECTION",
    "RETRYABLE_CODES",
    "ModelArtsClient",
    "StreamsConfig",
    "modelarts_client",
    "modelarts_resource",
    "stream_resource",
]
