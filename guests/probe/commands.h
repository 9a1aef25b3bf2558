/* The shell's command table. Adding a command = one handler + one table row
 * in commands.c; the shell checks argument counts from the table. */
#ifndef PROBE_COMMANDS_H
#define PROBE_COMMANDS_H

struct command {
    const char *name;
    const char *usage;      /* arguments, e.g. "ADDR [WIDTH]" */
    const char *help;       /* one line */
    int min_args;           /* not counting the command name */
    int max_args;           /* -1: no limit */
    void (*run)(int argc, char **argv);   /* argv[0] is the name */
};

const struct command *command_find(const char *name);
/* Prints "error: usage: NAME USAGE". */
void command_usage_error(const struct command *c);

#endif
