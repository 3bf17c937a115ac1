/* iservice_spawn.so: start a program in a new process that is born in a given cgroup.
 *
 *   int isv_spawn(const char *path, char *const argv[], char *const envp[],
 *                 const int stdio[3], const int *keep, int nkeep, const char *cwd,
 *                 int cgroup_fd, int *pid);
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
 * How: clone3(CLONE_VM | CLONE_VFORK [| CLONE_INTO_CGROUP]) with a stack of its own,
 * as glibc's posix_spawn does with clone: the parent (this thread) waits until the
 * child has exec'd or failed; the child runs only system-call wrappers, with every
 * signal blocked until its handlers are reset, so no handler of the parent's ever runs
 * in it.  Functions are bound at load time (-z now): no lazy binding in the child.
 *
 * Returns 0 and the pid in *pid, or an errno value, and then nothing runs (a child
 * whose exec failed has been reaped).  ENOSYS: no clone3 here (a kernel before 5.3, a
 * seccomp filter, an architecture other than x86-64); EINVAL or E2BIG: a kernel
 * without CLONE_INTO_CGROUP.  The caller then falls back to posix_spawn and
 * iservice-runas's own cgroup join.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define ISV_CLONE_VM 0x00000100ULL          /* linux/sched.h */
#define ISV_CLONE_VFORK 0x00004000ULL
#define ISV_CLONE_INTO_CGROUP 0x200000000ULL
#define CHILD_STACK (64 * 1024)
#define KERNEL_SIGSET 8 /* bytes of the kernel's sigset_t: 64 signals */

/* struct clone_args of linux/sched.h, as of Linux 5.7 (CLONE_ARGS_SIZE_VER2, 88 bytes) */
struct isv_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
        set_tid, set_tid_size, cgroup;
};

struct child {
    const char *path, *cwd;
    char *const *argv, *const *envp;
    const int *stdio, *keep;
    int nkeep;
    volatile int err; /* the child's errno when it fails (the memory is shared) */
};

__attribute__((noreturn)) static void child_fail(struct child *c)
{
    c->err = errno ? errno : EINVAL;
    syscall(SYS_exit_group, 127);
    for (;;)
        ;
}

__attribute__((noreturn)) static int child_main(void *arg)
{
    struct child *c = arg;
    /* every signal at its default disposition (the raw call: glibc's wrapper refuses
     * its own two), while all are still blocked (the parent blocked them) */
    unsigned long dfl[4] = {0, 0, 0, 0}; /* kernel sigaction: SIG_DFL, no flags, empty mask */
    for (int sig = 1; sig <= 64; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            syscall(SYS_rt_sigaction, sig, dfl, NULL, KERNEL_SIGSET);
    if (setsid() < 0)
        child_fail(c);
    for (int fd = 0; fd < 3; fd++) /* every source is 3 or above (spawn.py checks) */
        if (dup2(c->stdio[fd], fd) < 0)
            child_fail(c);
    for (int i = 0; i < c->nkeep; i++)
        if (fcntl(c->keep[i], F_SETFD, 0) < 0)
            child_fail(c);
    if (chdir(c->cwd) < 0)
        child_fail(c);
    unsigned long none = 0;
    if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, KERNEL_SIGSET) < 0)
        child_fail(c);
    execve(c->path, c->argv, c->envp);
    child_fail(c);
}

#if defined(__x86_64__)
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
#endif

__attribute__((visibility("default")))
int isv_spawn(const char *path, char *const argv[], char *const envp[], const int stdio[3],
              const int *keep, int nkeep, const char *cwd, int cgroup_fd, int *pid)
{
#if !defined(__x86_64__)
    (void)path, (void)argv, (void)envp, (void)stdio, (void)keep, (void)nkeep, (void)cwd;
    (void)cgroup_fd, (void)pid;
    return ENOSYS;
#else
    struct child c = {.path = path, .cwd = cwd, .argv = argv, .envp = envp,
                      .stdio = stdio, .keep = keep, .nkeep = nkeep, .err = 0};
    void *stack = mmap(NULL, CHILD_STACK, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED)
        return errno;
    unsigned long all = ~0UL, old = 0;
    if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, KERNEL_SIGSET) < 0) {
        int err = errno;
        munmap(stack, CHILD_STACK);
        return err;
    }
    struct isv_clone_args args = {
        .flags = ISV_CLONE_VM | ISV_CLONE_VFORK | (cgroup_fd >= 0 ? ISV_CLONE_INTO_CGROUP : 0),
        .exit_signal = SIGCHLD,
        .stack = (uint64_t)(uintptr_t)stack,
        .stack_size = CHILD_STACK,
        .cgroup = cgroup_fd >= 0 ? (uint64_t)cgroup_fd : 0,
    };
    long ret = clone3_call(&args, child_main, &c); /* back once the child exec'd or failed */
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, KERNEL_SIGSET);
    munmap(stack, CHILD_STACK);
    if (ret < 0)
        return (int)-ret; /* no child */
    if (c.err) {
        int status;
        while (waitpid((pid_t)ret, &status, 0) < 0 && errno == EINTR)
            ;
        return c.err;
    }
    *pid = (int)ret;
    return 0;
#endif
}
