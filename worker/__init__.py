"""vtrans worker: the Celery app and the task that runs one compression job."""
