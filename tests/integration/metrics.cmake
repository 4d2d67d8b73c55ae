# The Prometheus metrics endpoint end to end (included from tests/CMakeLists.txt after
# quantctl.cmake): `quantd serve` with metrics.listen on loopback, scraped before and after an
# RTN job that quantctl runs. It uses quantctl.cmake's qd_service_test, so it is left out
# where that is (no quantctl target).
if(NOT COMMAND qd_service_test)
  return()
endif()

qd_service_test(service-metrics metrics.sh)
