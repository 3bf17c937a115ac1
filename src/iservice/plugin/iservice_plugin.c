/*
 * iservice's openvpn plugin: forwards openvpn's environment to the service.
 *
 * At up, route-up, route-pre-down and down openvpn calls the plugin with its
 * environment (envp).  The plugin sends it, as it is, over the service channel as
 * ISERVICE_ENV messages (the envp strings, each followed by a NUL, cut into pieces;
 * the first flagged FIRST, the last LAST), waits for the service's one answer
 * (ISERVICE_ENV_RESULT) and returns success or failure to openvpn: a refusal fails the
 * call (an up failure stops openvpn).  The service makes the openvpn-msg requests from
 * the environment (iservice/produce.py) and checks each of them; nothing here is
 * trusted.  The script hook (iservice/hook.py) does the same from a process.
 *
 * Usage (set by the service): --plugin iservice_plugin.so CHANNEL_FD
 *
 * The layouts come from iservice_layout.h, generated from the Python declarations
 * (iservice/wire/msg.py) by setup.py: x64, little-endian.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openvpn/openvpn-plugin.h>

#include "iservice_layout.h"

#define PLUGIN_NAME "iservice-plugin"
/* built with -fvisibility=hidden: only openvpn's entry points are exported */
#define EXPORT __attribute__((visibility("default")))
#define TIMEOUT_MS 60000 /* per wait, like the hook's */
#define ENV_DATA_SIZE ISV_ENV_DATA_SIZE

typedef struct {
    plugin_log_t log;
    int fd;
} context_t;

static void logf_(context_t *ctx, openvpn_plugin_log_flags_t flags, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void logf_(context_t *ctx, openvpn_plugin_log_flags_t flags, const char *fmt, ...)
{
    /* Formatted here and handed over as "%s": no caller's text is ever a format. */
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (ctx && ctx->log)
        ctx->log(flags, PLUGIN_NAME, "%s", line);
    else
        fprintf(stderr, "%s: %s\n", PLUGIN_NAME, line);
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* A decimal number: ASCII digits, an optional minus, an int32. */
static int parse_int32(const char *s, int32_t *out)
{
    const char *p = s;
    int neg = 0;
    if (*p == '-') { neg = 1; p++; }
    if (!*p)
        return -1;
    int64_t v = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p - '0');
        if (v > 2147483648ll)
            return -1;
    }
    if (neg) v = -v;
    if (v > 2147483647ll || v < -2147483648ll)
        return -1;
    *out = (int32_t)v;
    return 0;
}

/* ---------------------------------------------------------------- the environment */

/* Where the next piece starts: string i of envp, its first `off` bytes already sent. */
typedef struct {
    const char *const *envp;
    size_t i, off;
} cursor_t;

static int at_end(const cursor_t *c)
{
    return !c->envp || !c->envp[c->i];
}

/* The next piece: up to `cap` bytes of the strings and their NULs. */
static size_t fill(cursor_t *c, unsigned char *data, size_t cap)
{
    size_t n = 0;
    while (n < cap && !at_end(c)) {
        const char *rest = c->envp[c->i] + c->off;
        size_t len = strlen(rest) + 1; /* with its NUL */
        size_t take = len < cap - n ? len : cap - n;
        memcpy(data + n, rest, take);
        n += take;
        if (take == len) {
            c->i++;
            c->off = 0;
        } else {
            c->off += take;
        }
    }
    return n;
}

static size_t env_bytes(const char *const *envp)
{
    size_t total = 0;
    for (size_t i = 0; envp && envp[i]; i++)
        total += strlen(envp[i]) + 1;
    return total;
}

/* ---------------------------------------------------------------- the exchange */

typedef struct {
    int32_t error_number;
    uint32_t requests, refused, refused_type;
} result_t;

static uint32_t new_id(void)
{
    uint32_t id;
    if (getrandom(&id, sizeof id, 0) != (ssize_t)sizeof id)
        id = (uint32_t)time(NULL) ^ (uint32_t)getpid();
    return 1 + id % ((1u << 30) - 1); /* stale answers of an earlier call never match */
}

/* The answer to `id` among what is queued: 1 (in *res), 0 (none yet), -1 (*why set). */
static int read_answer(int fd, uint32_t id, result_t *res, const char **why, int *why_errno)
{
    while (1) {
        unsigned char a[ISV_MAX_MESSAGE_SIZE + 1];
        ssize_t n = recv(fd, a, sizeof a, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { *why = "recv"; *why_errno = errno; return -1; }
        if (n == 0) { *why = "the service closed the channel"; return -1; }
        if (n < ISV_HEADER_SIZE || get32(a + ISV_HEADER_MESSAGE_ID_OFFSET) != id)
            continue; /* a stale answer to an earlier call */
        uint32_t type = get32(a + ISV_HEADER_TYPE_OFFSET);
        if (type == ISV_ACK_TYPE && n == ISV_ACK_SIZE) { /* a piece was refused */
            memset(res, 0, sizeof *res);
            res->error_number = (int32_t)get32(a + ISV_ACK_ERROR_NUMBER_OFFSET);
            return 1;
        }
        if (type != ISV_ISERVICE_ENV_RESULT_TYPE || n != ISV_ENV_RESULT_SIZE) {
            *why = "malformed answer from the service";
            return -1;
        }
        res->error_number = (int32_t)get32(a + ISV_ENV_RESULT_ERROR_NUMBER_OFFSET);
        res->requests = get32(a + ISV_ENV_RESULT_REQUESTS_OFFSET);
        res->refused = get32(a + ISV_ENV_RESULT_REFUSED_OFFSET);
        res->refused_type = get32(a + ISV_ENV_RESULT_REFUSED_TYPE_OFFSET);
        return 1;
    }
}

/* Send the environment while watching for the answer (an early one, a refusal, ends the
 * sending).  Returns 0 with *res, or -1 with *why set (channel broken, timeout). */
static int forward(int fd, int event, const char *const *envp, result_t *res,
                   const char **why, int *why_errno)
{
    unsigned char piece[ISV_ENV_SIZE];
    cursor_t c = {envp, 0, 0};
    uint32_t id = new_id();
    int pending = 0, first = 1, sent_all = 0;
    while (1) {
        struct pollfd p = {.fd = fd, .events = POLLIN | (sent_all ? 0 : POLLOUT)};
        int n = poll(&p, 1, TIMEOUT_MS);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { *why = "poll"; *why_errno = errno; return -1; }
        if (n == 0) { *why = "the service did not answer within 60 s"; return -1; }
        if (p.revents & POLLNVAL) { *why = "no service channel"; *why_errno = EBADF; return -1; }
        while ((p.revents & POLLOUT) && !sent_all) {
            if (!pending) {
                memset(piece, 0, sizeof piece);
                size_t len = fill(&c, piece + ISV_ENV_DATA_OFFSET, ENV_DATA_SIZE);
                uint32_t flags = (first ? ISV_ENV_FIRST : 0) | (at_end(&c) ? ISV_ENV_LAST : 0);
                put32(piece + ISV_HEADER_TYPE_OFFSET, ISV_ISERVICE_ENV_TYPE);
                put32(piece + ISV_HEADER_SIZE_OFFSET, ISV_ENV_SIZE); /* uint64: high half 0 */
                put32(piece + ISV_HEADER_MESSAGE_ID_OFFSET, id);
                put32(piece + ISV_ENV_EVENT_OFFSET, (uint32_t)event);
                put32(piece + ISV_ENV_FLAGS_OFFSET, flags);
                put32(piece + ISV_ENV_LENGTH_OFFSET, (uint32_t)len);
                first = 0;
                pending = 1;
            }
            ssize_t w = send(fd, piece, sizeof piece, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) { *why = "send"; *why_errno = errno; return -1; }
            pending = 0;
            sent_all = get32(piece + ISV_ENV_FLAGS_OFFSET) & ISV_ENV_LAST;
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            int got = read_answer(fd, id, res, why, why_errno);
            if (got)
                return got < 0 ? -1 : 0;
        }
    }
}

static double now_mono(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static const char *event_name(int event)
{
    switch (event) {
    case OPENVPN_PLUGIN_UP: return "up";
    case OPENVPN_PLUGIN_ROUTE_UP: return "route-up";
    case OPENVPN_PLUGIN_ROUTE_PREDOWN: return "route-pre-down";
    case OPENVPN_PLUGIN_DOWN: return "down";
    default: return "?";
    }
}

static int handle(context_t *ctx, int event, const char *const *envp)
{
    double t0 = now_mono();
    result_t res = {0};
    const char *why = NULL;
    int why_errno = 0;
    int status = OPENVPN_PLUGIN_FUNC_ERROR;
    size_t total = env_bytes(envp);
    if (total > ISV_MAX_ENV_BYTES) {
        logf_(ctx, PLOG_ERR, "%s: the environment is %zu bytes; the service takes at most %d",
              event_name(event), total, ISV_MAX_ENV_BYTES);
    } else if (forward(ctx->fd, event, envp, &res, &why, &why_errno)) {
        if (why_errno)
            logf_(ctx, PLOG_ERR, "%s on fd %d: %s", why, ctx->fd, strerror(why_errno));
        else
            logf_(ctx, PLOG_ERR, "%s", why);
    } else if (res.error_number && !res.requests) {
        logf_(ctx, PLOG_ERR, "%s: the service refused the environment: error 0x%08x",
              event_name(event), (uint32_t)res.error_number);
    } else if (res.refused || res.error_number) {
        logf_(ctx, PLOG_ERR, "%s: %u of %u requests refused by the service; the first: %s, "
              "error 0x%08x", event_name(event), res.refused, res.requests,
              isv_type_name(res.refused_type), (uint32_t)res.error_number);
    } else {
        status = OPENVPN_PLUGIN_FUNC_SUCCESS;
    }
    double t1 = now_mono();
    /* One line per event at verb 1: users see what was asked, the benchmark reads the
     * time from openvpn's call to the service's answer. */
    logf_(ctx, PLOG_NOTE, "%s: %u messages, %u refused, %.1f ms (monotonic %.9f -> %.9f)%s",
          event_name(event), res.requests, res.refused, (t1 - t0) * 1000, t0, t1,
          status == OPENVPN_PLUGIN_FUNC_SUCCESS ? "" : ", failed");
    return status;
}

/* ---------------------------------------------------------------- plugin API */

EXPORT int openvpn_plugin_open_v3(const int version,
                                  struct openvpn_plugin_args_open_in const *args,
                                  struct openvpn_plugin_args_open_return *ret)
{
    if (version < 3) /* callbacks (plugin_log) exist from struct version 3 on */
        return OPENVPN_PLUGIN_FUNC_ERROR;
    plugin_log_t log = args->callbacks ? args->callbacks->plugin_log : NULL;
    context_t tmp = {.log = log, .fd = -1};
    const char *arg = args->argv && args->argv[0] ? args->argv[1] : NULL;
    int32_t fd;
    if (!arg || parse_int32(arg, &fd) || fd < 0 || args->argv[2]) {
        logf_(&tmp, PLOG_ERR, "usage: --plugin iservice_plugin.so CHANNEL_FD");
        return OPENVPN_PLUGIN_FUNC_ERROR;
    }
    if (fcntl(fd, F_GETFD) < 0) {
        logf_(&tmp, PLOG_ERR, "no service channel on fd %d: %s", fd, strerror(errno));
        return OPENVPN_PLUGIN_FUNC_ERROR;
    }
    context_t *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return OPENVPN_PLUGIN_FUNC_ERROR;
    ctx->log = log;
    ctx->fd = fd;
    ret->type_mask = OPENVPN_PLUGIN_MASK(OPENVPN_PLUGIN_UP) |
                     OPENVPN_PLUGIN_MASK(OPENVPN_PLUGIN_ROUTE_UP) |
                     OPENVPN_PLUGIN_MASK(OPENVPN_PLUGIN_ROUTE_PREDOWN) |
                     OPENVPN_PLUGIN_MASK(OPENVPN_PLUGIN_DOWN);
    ret->handle = (openvpn_plugin_handle_t)ctx;
    return OPENVPN_PLUGIN_FUNC_SUCCESS;
}

EXPORT int openvpn_plugin_func_v3(const int version,
                                  struct openvpn_plugin_args_func_in const *args,
                                  struct openvpn_plugin_args_func_return *ret)
{
    (void)version;
    (void)ret;
    context_t *ctx = (context_t *)args->handle;
    switch (args->type) {
    case OPENVPN_PLUGIN_UP:
    case OPENVPN_PLUGIN_ROUTE_UP:
    case OPENVPN_PLUGIN_ROUTE_PREDOWN:
    case OPENVPN_PLUGIN_DOWN:
        return handle(ctx, args->type, (const char *const *)args->envp);
    default:
        return OPENVPN_PLUGIN_FUNC_SUCCESS;
    }
}

EXPORT void openvpn_plugin_close_v1(openvpn_plugin_handle_t handle)
{
    /* The channel descriptor stays open: it is openvpn's (inherited), not ours. */
    free(handle);
}
