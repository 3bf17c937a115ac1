/* iservice_spawn.so: start a program in a new process that is born in a given cgroup.
 *
 *   int isv_spawn(const char *path, char *const argv[], char *const envp[],
 *                 const int stdio[3], const int *keep, int nkeep, const char *cwd,
 *                 int cgroup_fd, int *pid, void **handle);
 *   int isv_spawn_release(void *handle);
 *
 * The service (iservice/linux/spawn.py, through ctypes: no GIL held) starts
 * iservice-runas with it.  What the child gets is what spawn.py's posix_spawn gives:
 * descriptors 0-2 from stdio[0..2], keep[0..nkeep) at their own numbers with
 * close-on-exec cleared, the working directory cwd, a new session, every signal at its
 * default disposition and none blocked, exactly envp.  And one thing glibc's
 * posix_spawn (2.36) cannot give: with cgroup_fd >= 0 (a directory descriptor of a
 * cgroup2 cgroup, O_PATH is enough) the process is created in that cgroup
 * (clone3's CLONE_INTO_CGROUP, Linux 5.7).
 *
 * Why: a process that moves itself into a cgroup (iservice-runas writing its
 * cgroup.procs) takes the kernel's cgroup_threadgroup_rwsem for writing, which waits
 * for an RCU grace period unless the cgroup2 mount has "favordynmods": measured 14 ms
 * per session start on an idle 2-vCPU guest, openvpn starting that much later (and
 * every fork on the machine held up meanwhile).  Created in the cgroup, nothing moves
 * (docs/performance.md, "Fifth look").
 *
 * How: clone3(CLONE_VM [| CLONE_INTO_CGROUP]) with a stack of its own, as glibc's
 * posix_spawn does with clone, but without CLONE_VFORK: the caller does not wait for
 * the child's exec.  Waiting cost ~1.2 ms per start on an idle 2-vCPU guest (the child
 * is created on the other CPU, and the parent's CPU, idle meanwhile, took ~1 ms to run
 * the woken parent again: docs/performance.md, "Sixth look"), where the exec itself is
 * done 0.23 ms after the clone.  So everything the child reads lives in one mapping of
 * its own (the copies of path, argv, envp, cwd and the descriptor numbers, then its
 * stack), which isv_spawn_release unmaps once the child has been reaped.  The child
 * shares the memory (and the thread pointer) of the service until its exec, so it makes
 * only raw system calls (no errno, no libc) and writes nothing but its own stack and,
 * when it fails, the errno field of its mapping; every signal is blocked from before
 * the clone until its handlers are reset, so no handler of the parent's ever runs in it.
 *
 * isv_spawn returns 0 and the pid in *pid and the mapping in *handle, or an errno value
 * and then nothing runs.  A failure in the child (its exec's ENOENT, say) is an exit
 * status of 127, and the errno is what isv_spawn_release returns (0: the exec was
 * done).  ENOSYS: no clone3 here (a kernel before 5.3, a seccomp filter, an
 * architecture other than x86-64); EINVAL or E2BIG: a kernel without
 * CLONE_INTO_CGROUP.  The caller then falls back to posix_spawn and iservice-runas's
 * own cgroup join.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ISV_CLONE_VM 0x00000100ULL          /* linux/sched.h */
#define ISV_CLONE_INTO_CGROUP 0x200000000ULL
#define CHILD_STACK (64 * 1024)
#define KERNEL_SIGSET 8 /* bytes of the kernel's sigset_t: 64 signals */
#define PAGE 4096

/* struct clone_args of linux/sched.h, as of Linux 5.7 (CLONE_ARGS_SIZE_VER2, 88 bytes) */
struct isv_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
        set_tid, set_tid_size, cgroup;
};

/* The start of the child's mapping; what the pointers point to follows it, then the
 * stack up to the mapping's end. */
struct child {
    size_t size; /* of the whole mapping */
    const char *path, *cwd;
    char **argv, **envp;
    int stdio[3];
    int nkeep;
    int *keep;
    volatile int err; /* the child's errno when it fails (the memory is shared) */
};

#if defined(__x86_64__)
/* A system call without libc: the child must not set the service thread's errno (it
 * shares that thread's thread-local storage until its exec).  -errno on failure. */
static inline long raw4(long n, long a, long b, long c, long d)
{
    long ret;
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "0"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
                     : "rcx", "r11", "memory");
    return ret;
}

__attribute__((noreturn)) static void child_fail(struct child *c, long ret)
{
    c->err = ret < 0 ? (int)-ret : EINVAL;
    raw4(SYS_exit_group, 127, 0, 0, 0);
    for (;;)
        ;
}

__attribute__((noreturn)) static int child_main(void *arg)
{
    struct child *c = arg;
    long r;
    /* every signal at its default disposition (the raw call: glibc's wrapper refuses
     * its own two), while all are still blocked (the parent blocked them) */
    unsigned long dfl[4] = {0, 0, 0, 0}; /* kernel sigaction: SIG_DFL, no flags, empty mask */
    for (int sig = 1; sig <= 64; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            raw4(SYS_rt_sigaction, sig, (long)dfl, 0, KERNEL_SIGSET);
    if ((r = raw4(SYS_setsid, 0, 0, 0, 0)) < 0)
        child_fail(c, r);
    for (int fd = 0; fd < 3; fd++) /* every source is 3 or above (spawn.py checks) */
        if ((r = raw4(SYS_dup2, c->stdio[fd], fd, 0, 0)) < 0)
            child_fail(c, r);
    for (int i = 0; i < c->nkeep; i++)
        if ((r = raw4(SYS_fcntl, c->keep[i], F_SETFD, 0, 0)) < 0)
            child_fail(c, r);
    if ((r = raw4(SYS_chdir, (long)c->cwd, 0, 0, 0)) < 0)
        child_fail(c, r);
    unsigned long none = 0;
    if ((r = raw4(SYS_rt_sigprocmask, SIG_SETMASK, (long)&none, 0, KERNEL_SIGSET)) < 0)
        child_fail(c, r);
    r = raw4(SYS_execve, (long)c->path, (long)c->argv, (long)c->envp, 0);
    child_fail(c, r);
}

/* clone3, the child calling fn(arg) on its new stack and never returning.  The kernel
 * gives the child the parent's registers but rax (0) and rsp (the stack's top, which is
 * 16-byte aligned: a page boundary), so fn and arg wait in callee-saved registers. */
static long clone3_call(struct isv_clone_args *args, int (*fn)(void *), void *arg)
{
    long ret;
    register void *r12 __asm__("r12") = (void *)fn;
    register void *r13 __asm__("r13") = arg;
    __asm__ volatile("syscall\n\t"
                     "test %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     "xor %%ebp, %%ebp\n\t"
                     "mov %%r13, %%rdi\n\t"
                     "call *%%r12\n\t"
                     "mov $231, %%eax\n\t" /* exit_group: child_main never returns */
                     "mov $127, %%edi\n\t"
                     "syscall\n\t"
                     "1:\n\t"
                     : "=a"(ret)
                     : "0"((long)SYS_clone3), "D"(args), "S"(sizeof *args), "r"(r12),
                       "r"(r13)
                     : "rcx", "r11", "memory");
    return ret;
}

static size_t strings_size(char *const v[], size_t *count)
{
    size_t n = 0, bytes = 0;
    for (; v[n]; n++)
        bytes += strlen(v[n]) + 1;
    *count = n;
    return bytes + (n + 1) * sizeof(char *);
}

/* Copy the NULL-ended array v to *ptrs (its pointers) and *text (its strings). */
static char **copy_strings(char *const v[], size_t n, char ***ptrs, char **text)
{
    char **out = *ptrs;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(v[i]) + 1;
        memcpy(*text, v[i], len);
        out[i] = *text;
        *text += len;
    }
    out[n] = NULL;
    *ptrs += n + 1;
    return out;
}
#endif

__attribute__((visibility("default")))
int isv_spawn(const char *path, char *const argv[], char *const envp[], const int stdio[3],
              const int *keep, int nkeep, const char *cwd, int cgroup_fd, int *pid,
              void **handle)
{
#if !defined(__x86_64__)
    (void)path, (void)argv, (void)envp, (void)stdio, (void)keep, (void)nkeep, (void)cwd;
    (void)cgroup_fd, (void)pid, (void)handle;
    return ENOSYS;
#else
    if (nkeep < 0)
        return EINVAL;
    size_t nargv, nenvp;
    size_t data = sizeof(struct child) + (size_t)nkeep * sizeof(int)
        + strings_size(argv, &nargv) + strings_size(envp, &nenvp)
        + strlen(path) + 1 + strlen(cwd) + 1 + 2 * sizeof(char *);
    size_t size = (data + PAGE - 1) / PAGE * PAGE + CHILD_STACK;
    char *map = mmap(NULL, size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (map == MAP_FAILED)
        return errno;
    struct child *c = (struct child *)map;
    /* after the struct: the pointer arrays (aligned), then the ints, then the text */
    char **ptrs = (char **)(map + (sizeof *c + sizeof(char *) - 1) / sizeof(char *)
                                      * sizeof(char *));
    c->keep = (int *)(ptrs + nargv + 1 + nenvp + 1);
    memcpy(c->keep, keep, (size_t)nkeep * sizeof(int));
    c->nkeep = nkeep;
    char *text = (char *)(c->keep + nkeep);
    c->size = size;
    c->argv = copy_strings(argv, nargv, &ptrs, &text);
    c->envp = copy_strings(envp, nenvp, &ptrs, &text);
    memcpy(c->stdio, stdio, sizeof c->stdio);
    c->path = strcpy(text, path);
    text += strlen(path) + 1;
    c->cwd = strcpy(text, cwd);
    c->err = 0;

    unsigned long all = ~0UL, old = 0;
    if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, KERNEL_SIGSET) < 0) {
        int err = errno;
        munmap(map, size);
        return err;
    }
    struct isv_clone_args args = {
        .flags = ISV_CLONE_VM | (cgroup_fd >= 0 ? ISV_CLONE_INTO_CGROUP : 0),
        .exit_signal = SIGCHLD,
        .stack = (uint64_t)(uintptr_t)(map + size - CHILD_STACK),
        .stack_size = CHILD_STACK,
        .cgroup = cgroup_fd >= 0 ? (uint64_t)cgroup_fd : 0,
    };
    long ret = clone3_call(&args, child_main, c); /* back at once: no CLONE_VFORK */
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, KERNEL_SIGSET);
    if (ret < 0) {
        munmap(map, size);
        return (int)-ret; /* no child */
    }
    *pid = (int)ret;
    *handle = map;
    return 0;
#endif
}

/* Only once the child has been reaped (it exec'd or exited: nothing uses the mapping
 * any more).  The child's errno if it failed before its exec, else 0. */
__attribute__((visibility("default")))
int isv_spawn_release(void *handle)
{
#if !defined(__x86_64__)
    (void)handle;
    return 0;
#else
    struct child *c = handle;
    int err = c->err;
    munmap(c, c->size);
    return err;
#endif
}
