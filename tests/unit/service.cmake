# The service core (daemon/service.c) in process: uploads, jobs, cache, events, restart.
qd_c_test(test-service LABELS unit SOURCES unit/test-service.c LIBS qd_service)
# The Prometheus endpoint (daemon/metrics.c): the renderer, and the HTTP server on a service.
qd_c_test(test-metrics LABELS unit SOURCES unit/test-metrics.c LIBS qd_metrics)
