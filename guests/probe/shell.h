#ifndef PROBE_SHELL_H
#define PROBE_SHELL_H

#define SHELL_PROMPT   "probe> "
#define SHELL_LINE_MAX 128   /* characters per line, not counting Enter */
#define SHELL_ARGS_MAX 16

void shell_run(void) __attribute__((noreturn));

#endif
