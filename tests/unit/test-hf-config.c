#include "test.h"
#include "error.h"
QD_TEST_MAIN()
