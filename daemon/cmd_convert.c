/* placeholder: being written */
#include <stdio.h>
#include "commands.h"
int qd_cmd_convert(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "quantd convert: not built yet\n");
    return 1;
}
