/* placeholder: being written */
#include <stdio.h>
#include "commands.h"
int qd_cmd_inspect(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "quantd inspect: not built yet\n");
    return 1;
}
