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

/* Shared argument helpers: each prints one "error: ..." line and returns 0 on
 * a bad argument, 1 on success. */
#include <stdint.h>
void error(const char *msg);
int arg_u32(const char *what, const char *s, uint32_t *out);
int arg_width(const char *s, uint32_t *out);                 /* 1, 2 or 4 */
int arg_value(const char *s, uint32_t width, uint32_t *out); /* fits in width */

/* Device command handlers (pci.c, virtio_*.c). */
void cmd_lspci(int argc, char **argv);
void cmd_pciassign(int argc, char **argv);
void cmd_pcicfg(int argc, char **argv);
void cmd_virtio(int argc, char **argv);
void cmd_blk(int argc, char **argv);
void cmd_rng(int argc, char **argv);
void cmd_console(int argc, char **argv);
void cmd_balloon(int argc, char **argv);
void cmd_acpi(int argc, char **argv);
void cmd_poweroff(int argc, char **argv);
void cmd_pwrbtn(int argc, char **argv);
void cmd_pattern(int argc, char **argv);
void cmd_dirty(int argc, char **argv);

#endif
