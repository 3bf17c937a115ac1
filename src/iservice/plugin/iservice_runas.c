/* iservice-runas: become a user, then exec a program in place (same PID).
 *
 *   iservice-runas UID GID GROUPS NICE CGROUP KEEP -- EXE [ARG...]
 *
 * UID, GID and NICE are decimal; GROUPS is a comma-separated list of decimal gids or
 * "-" for none; CGROUP is "-" or the decimal number of an open descriptor of the
 * session cgroup's cgroup.procs (written "0" = this process, then closed: the program
 * never inherits it; iservice/linux/cgroup.py says why).  KEEP is "-" or a
 * comma-separated list of open descriptors (3 or above) the program gets; every other
 * descriptor from 3 up is closed first, so the program has 0-2 and KEEP, whatever the
 * service's spawn let through (iservice/linux/spawn.py).  EXE is an absolute path,
 * executed with argv[0] = EXE and the rest as given; the environment passes through
 * unchanged.
 *
 * The service (iservice/linux/launch.py) starts openvpn through this helper, as root,
 * with glibc's posix_spawn (iservice/linux/spawn.py): it replaces util-linux's setpriv, which did the
 * same but cost ~1 ms of CPU per start (libcap-ng set-up) against ~0.1 ms here, and
 * that CPU was taken from the service while a burst of sessions started (issue 8, P3;
 * docs/performance.md).  It never parses a user-chosen value: the service builds the
 * numbers; everything after "--" is openvpn's and only passed on.
 *
 * Order: every descriptor not in KEEP closed, into the session's cgroup (as root,
 * before anything else: from here on every process of the session is in it), nice
 * (while still root, so any value of `priority` works), ambient capabilities cleared,
 * supplementary groups, gid, uid (all three ids of each: a saved root id would let the
 * program take root back), inheritable capabilities cleared (setresuid to a non-zero
 * uid already emptied the permitted and effective sets; this matches setpriv
 * --inh-caps=-all), then a check that the ids really are the user's, then every signal
 * at its default disposition and none blocked.  Any failure: a message on stderr and
 * exit 126 before the program runs;
 * an exec failure: exit 127 (the shell's codes, as setpriv's).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_GROUPS 65536 /* the kernel's NGROUPS_MAX */
#define MAX_KEEP 16

static void die(const char *what, int err)
{
    if (err)
        fprintf(stderr, "iservice-runas: %s: %s\n", what, strerror(err));
    else
        fprintf(stderr, "iservice-runas: %s\n", what);
    exit(126);
}

/* A decimal number in [lo, hi]; digits only (an optional leading '-' when lo < 0). */
static long number(const char *s, long lo, long hi, const char *what)
{
    const char *p = s;
    if (*p == '-' && lo < 0)
        p++;
    if (*p == '\0' || strlen(p) > 10)
        die(what, 0);
    for (const char *q = p; *q; q++)
        if (*q < '0' || *q > '9')
            die(what, 0);
    long v = strtol(s, NULL, 10);
    if (v < lo || v > hi)
        die(what, 0);
    return v;
}

/* The next entry of a comma-separated list, cut off in place; NULL after the last. */
static char *next_entry(char **rest)
{
    char *tok = *rest;
    if (!tok)
        return NULL;
    char *comma = strchr(tok, ',');
    if (comma)
        *comma = '\0';
    *rest = comma ? comma + 1 : NULL;
    return tok;
}

/* "-" or "G[,G...]": no empty entries. */
static size_t parse_groups(char *list, gid_t *out)
{
    if (strcmp(list, "-") == 0)
        return 0;
    size_t n = 0;
    for (char *rest = list, *tok; (tok = next_entry(&rest)) != NULL; n++) {
        if (n == MAX_GROUPS)
            die("too many groups", 0);
        out[n] = (gid_t)number(tok, 0, 4294967294L, "bad group id");
    }
    return n;
}

/* "-" or "FD[,FD...]", each open and 3 or above; sorted into out. */
static size_t parse_keep(char *list, int *out)
{
    if (strcmp(list, "-") == 0)
        return 0;
    size_t n = 0;
    for (char *rest = list, *tok; (tok = next_entry(&rest)) != NULL; n++) {
        if (n == MAX_KEEP)
            die("too many descriptors to keep", 0);
        int fd = (int)number(tok, 3, INT_MAX, "bad descriptor to keep");
        if (fcntl(fd, F_GETFD) < 0)
            die("a descriptor to keep is not open", errno);
        size_t i = n;
        for (; i > 0 && out[i - 1] > fd; i--)
            out[i] = out[i - 1];
        out[i] = fd;
    }
    return n;
}

/* Close every descriptor from 3 up but keep[0..n) (sorted) and also_keep. */
static void close_others(const int *keep, size_t n, int also_keep)
{
    int lo = 3;
    for (size_t i = 0; i <= n; i++) {
        int hi = i < n ? keep[i] : INT_MAX; /* close [lo, hi) */
        for (int a = lo; a < hi;) {
            /* split around also_keep (the cgroup descriptor, closed after its use) */
            int b = (also_keep >= a && also_keep < hi) ? also_keep : hi;
            if (b > a && syscall(SYS_close_range, (unsigned)a, (unsigned)(b - 1), 0) != 0)
                die("closing descriptors", errno);
            a = b == also_keep ? b + 1 : hi;
        }
        if (i < n)
            lo = keep[i] + 1;
    }
}

/* Every signal at its default disposition, none blocked, as a freshly started program
 * expects: glibc's posix_spawn (the service's spawn) leaves its two internal signals
 * (32 and 33) ignored in the child, and an ignored signal stays ignored across exec.
 * Raw system calls: glibc's wrappers refuse to touch those two. */
static void default_signals(void)
{
    unsigned long zero[4] = {0, 0, 0, 0}; /* struct sigaction: SIG_DFL, no flags, empty mask */
    for (int sig = 1; sig <= 64; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            syscall(SYS_rt_sigaction, sig, zero, NULL, 8); /* 8: the kernel's sigset_t */
    if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, zero, NULL, 8) != 0)
        die("clearing the signal mask", errno);
}

int main(int argc, char **argv)
{
    if (argc < 9 || strcmp(argv[7], "--") != 0 || argv[8][0] != '/')
        die("usage: iservice-runas UID GID GROUPS NICE CGROUP KEEP -- /ABSOLUTE/EXE "
            "[ARG...]", 0);
    uid_t uid = (uid_t)number(argv[1], 0, 4294967294L, "bad uid");
    gid_t gid = (gid_t)number(argv[2], 0, 4294967294L, "bad gid");
    gid_t *groups = calloc(MAX_GROUPS, sizeof *groups);
    if (!groups)
        die("out of memory", errno);
    size_t ngroups = parse_groups(argv[3], groups);
    int nice = (int)number(argv[4], -20, 19, "bad nice value");
    int cgroup_fd = -1;
    if (strcmp(argv[5], "-") != 0)
        cgroup_fd = (int)number(argv[5], 3, INT_MAX, "bad cgroup descriptor");
    int keep[MAX_KEEP];
    size_t nkeep = parse_keep(argv[6], keep);
    for (size_t i = 0; i < nkeep; i++)
        if (keep[i] == cgroup_fd)
            die("the cgroup descriptor cannot be kept", 0);
    close_others(keep, nkeep, cgroup_fd);

    if (cgroup_fd >= 0) {
        if (write(cgroup_fd, "0", 1) != 1)
            die("joining the session's cgroup", errno);
        if (close(cgroup_fd) != 0)
            die("closing the cgroup descriptor", errno);
    }

    if (nice && setpriority(PRIO_PROCESS, 0, nice) != 0)
        die("setpriority", errno);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        die("clearing ambient capabilities", errno);
    if (setgroups(ngroups, groups) != 0)
        die("setgroups", errno);
    if (setresgid(gid, gid, gid) != 0)
        die("setresgid", errno);
    if (setresuid(uid, uid, uid) != 0)
        die("setresuid", errno);

    struct __user_cap_header_struct head = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct caps[_LINUX_CAPABILITY_U32S_3];
    memset(caps, 0, sizeof caps);
    if (syscall(SYS_capget, &head, caps) != 0)
        die("capget", errno);
    for (int i = 0; i < _LINUX_CAPABILITY_U32S_3; i++)
        caps[i].inheritable = 0;
    if (syscall(SYS_capset, &head, caps) != 0)
        die("clearing inheritable capabilities", errno);

    uid_t r, e, s;
    gid_t rg, eg, sg;
    if (getresuid(&r, &e, &s) != 0 || r != uid || e != uid || s != uid ||
        getresgid(&rg, &eg, &sg) != 0 || rg != gid || eg != gid || sg != gid)
        die("the ids did not change", 0);
    free(groups);

    default_signals();
    execv(argv[8], argv + 8); /* argv[0] = the program's path, as setpriv gives it */
    fprintf(stderr, "iservice-runas: cannot run %s: %s\n", argv[8], strerror(errno));
    return 127;
}
