/* placeholder: being written */
#include <stdio.h>
#include "commands.h"
int qd_cmd_config(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "quantd config: not built yet\n");
    return 1;
}
