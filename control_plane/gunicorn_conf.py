"""gunicorn settings of the API container: `gunicorn -c python:control_plane.gunicorn_conf control_plane.wsgi:app`.

One worker process with threads per container: the HTTP metrics a process counts are then the whole
container's, so Prometheus scrapes each replica (tasks.api) and sums; scale with replicas, not workers.
Override for one run with GUNICORN_CMD_ARGS (e.g. "--threads 16"), gunicorn's own variable.
"""
bind = "0.0.0.0:8000"
workers = 1
worker_class = "gthread"
threads = 8
timeout = 60
graceful_timeout = 30
accesslog = "-"
# Parsed back into fields by control_plane.logs (method, path, status, duration, the echoed request id).
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(D)sus request_id=%({x-request-id}o)s'
logger_class = "control_plane.logs.GunicornLogger"
