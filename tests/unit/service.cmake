# The service core (daemon/service.c) in process: uploads, jobs, cache, events, restart.
qd_c_test(test-service LABELS unit SOURCES unit/test-service.c LIBS qd_service)
