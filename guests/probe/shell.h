#ifndef PROBE_SHELL_H
#define PROBE_SHELL_H

#define SHELL_PROMPT   "probe> "
#define SHELL_LINE_MAX 128   /* characters per line, not counting Enter */
/* A 128-character line holds at most 64 words, so no line can have too many. */
#define SHELL_ARGS_MAX 64

void shell_run(void) __attribute__((noreturn));

#endif
