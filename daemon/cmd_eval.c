/* placeholder: being written */
#include <stdio.h>
#include "commands.h"
int qd_cmd_eval(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "quantd eval: not built yet\n");
    return 1;
}
