/* Line editor and dispatcher: read a line with echo and backspace, split it
 * on blanks, look the first word up in the command table. */
#include "commands.h"
#include "print.h"
#include "serial.h"
#include "shell.h"
#include "util.h"

static char line[SHELL_LINE_MAX + 1];

/* Reads one line into `line`. Returns 0, or -1 if it was too long. Characters
 * beyond the limit are counted (not echoed, not stored) so backspace can take
 * them back; a line only counts as too long if excess remains at Enter. */
static int read_line(void)
{
    static int last_was_cr;   /* swallow the \n of a \r\n pair */
    unsigned len = 0, excess = 0;

    for (;;) {
        char c = serial_getc();
        if (c == '\n' && last_was_cr) {
            last_was_cr = 0;
            continue;
        }
        last_was_cr = (c == '\r');
        if (c == '\r' || c == '\n') {
            print_nl();
            line[len] = '\0';
            return excess ? -1 : 0;
        }
        if (c == 0x7f || c == 0x08) {
            if (excess) {
                excess--;
            } else if (len) {
                len--;
                print("\b \b");   /* erase the character on the terminal */
            }
            continue;
        }
        if (c == 0x03) {          /* Ctrl-C: drop the line */
            print("^C");
            print_nl();
            len = excess = 0;
            print(SHELL_PROMPT);
            continue;
        }
        if ((unsigned char)c < 0x20 || (unsigned char)c > 0x7e)
            continue;             /* other control and non-ASCII bytes: ignore */
        if (len < SHELL_LINE_MAX) {
            line[len++] = c;
            serial_putc(c);
        } else {
            excess++;
        }
    }
}

static int is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* Splits `s` in place. Returns the word count, or -1 if there are too many. */
static int split(char *s, char **argv)
{
    int argc = 0;
    for (;;) {
        while (is_blank(*s))
            *s++ = '\0';
        if (!*s)
            return argc;
        if (argc == SHELL_ARGS_MAX)
            return -1;
        argv[argc++] = s;
        while (*s && !is_blank(*s))
            s++;
    }
}

static void execute(void)
{
    char *argv[SHELL_ARGS_MAX];
    int argc = split(line, argv);

    if (argc == 0)
        return;
    if (argc < 0) {
        print("error: too many arguments (max ");
        print_dec(SHELL_ARGS_MAX - 1);
        println(")");
        return;
    }
    const struct command *c = command_find(argv[0]);
    if (!c) {
        print("error: unknown command '");
        print(argv[0]);
        println("' (try help)");
        return;
    }
    int nargs = argc - 1;
    if (nargs < c->min_args || (c->max_args >= 0 && nargs > c->max_args)) {
        command_usage_error(c);
        return;
    }
    c->run(argc, argv);
}

void shell_run(void)
{
    for (;;) {
        print(SHELL_PROMPT);
        if (read_line() < 0) {
            print("error: line too long (max ");
            print_dec(SHELL_LINE_MAX);
            println(" characters)");
            continue;
        }
        execute();
    }
}
