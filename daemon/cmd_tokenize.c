/* placeholder: being written */
#include <stdio.h>
#include "commands.h"
int qd_cmd_tokenize(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "quantd tokenize: not built yet\n");
    return 1;
}
