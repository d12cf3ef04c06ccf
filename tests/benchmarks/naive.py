"""The pipeline a user would write first, for comparison: official SDK + OpenTelemetry SDK.

Polls every task's log preview with ``huaweicloudsdkmodelarts`` (the official client), takes the
part of the preview after what it saw last time, splits it into lines and emits each line with
``Logger.emit`` into ``LoggerProvider`` + ``BatchLogRecordProcessor(OTLPLogExporter())`` with
their defaults. It stops after two polls that found nothing new, then shuts the provider down
(which flushes). Prints one JSON line: lines emitted, lines it knew it could not see (the preview
only shows the last MBs of a log), seconds.

``python tests/benchmarks/naive.py --sim INFO_JSON --endpoint http://127.0.0.1:PORT/v1/logs``
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkmodelarts.v1 import ModelArtsClient, ShowTrainingJobLogsPreviewRequest
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sim", required=True, help="the JSON line sim_server.py printed")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sim = json.loads(args.sim)

    client = (
        ModelArtsClient.new_builder()
        .with_credentials(BasicCredentials(sim["ak"], sim["sk"], sim["project_id"]))
        .with_endpoint(sim["url"])
        .build()
    )
    provider = LoggerProvider(resource=Resource.create({"service.name": "modelarts-training"}))
    provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=args.endpoint)))
    logger = provider.get_logger("naive-modelarts")

    started = time.monotonic()
    seen: dict[tuple[str, str], int] = {}
    emitted = 0
    unseen_bytes = 0
    quiet = 0
    while quiet < 2:
        found = False
        for job_id, tasks in sim["jobs"].items():
            for task in tasks:
                answer = client.show_training_job_logs_preview(
                    ShowTrainingJobLogsPreviewRequest(training_job_id=job_id, task_id=task)
                )
                previous = seen.get((job_id, task), 0)
                if answer.full_size <= previous:
                    continue
                found = True
                content = (answer.content or "").encode()
                content_start = answer.full_size - len(content)
                if content_start > previous:
                    unseen_bytes += content_start - previous
                new = content[max(0, previous - content_start) :]
                seen[(job_id, task)] = answer.full_size
                attributes = {"modelarts.training_job.id": job_id, "modelarts.task.id": task}
                for line in new.decode("utf-8", "replace").splitlines():
                    logger.emit(body=line, attributes=attributes)
                    emitted += 1
        quiet = 0 if found else quiet + 1
        time.sleep(args.poll_interval)
    emit_done = time.monotonic() - started
    provider.shutdown()
    print(
        json.dumps(
            {
                "emitted": emitted,
                "unseen_bytes": unseen_bytes,
                "emit_seconds": emit_done,
                "seconds": time.monotonic() - started,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
