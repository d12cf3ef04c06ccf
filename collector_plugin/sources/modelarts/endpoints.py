"""Every ModelArts endpoint the sources call, as path templates (one of each).

A template is filled with :meth:`~.client.ModelArtsClient.path` and is also the ``endpoint``
label of metrics and errors: low cardinality, never an id, never a signed URL. Parameter names
follow the API documents in shared/api/.
"""

JOB = "/v2/{project_id}/training-jobs/{training_job_id}"
JOB_SEARCH = "/v2/{project_id}/training-job-searches"
TASK_LOG_PREVIEW = "/v2/{project_id}/training-jobs/{training_job_id}/tasks/{task_id}/logs/preview"
TASK_LOG_URL = "/v2/{project_id}/training-jobs/{training_job_id}/tasks/{task_id}/logs/url"
EVENTS = "/v2/{project_id}/training-jobs/{training_job_id}/events"
V1_LOG = "/v1/{project_id}/training-jobs/{job_id}/versions/{version_id}/log"
V1_LOG_FILE_NAMES = "/v1/{project_id}/training-jobs/{job_id}/versions/{version_id}/log/file-names"
SERVICES = "/v1/{project_id}/services"
SERVICE_LOGS = "/v1/{project_id}/services/{service_id}/logs"
OBS = "obs"  # the label of reads from a temporary OBS link (the URL itself is a secret)
