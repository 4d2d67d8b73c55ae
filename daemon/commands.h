/*
 * commands.h - the subcommands of the quantd binary.
 *
 * Each takes the arguments after its name (argv[0] is the subcommand name) and returns the
 * process exit status: 0 success, 1 the work failed (the message went to stderr), 2 a usage
 * error. `--help` prints the command's usage to stdout and returns 0.
 */
#ifndef QD_COMMANDS_H
#define QD_COMMANDS_H

int qd_cmd_inspect(int argc, char **argv);
int qd_cmd_convert(int argc, char **argv);
int qd_cmd_config(int argc, char **argv);
int qd_cmd_eval(int argc, char **argv);
int qd_cmd_tokenize(int argc, char **argv);
int qd_cmd_quantize(int argc, char **argv);
int qd_cmd_serve(int argc, char **argv);

#endif /* QD_COMMANDS_H */
