/*
 * iservice's openvpn plugin: openvpn's environment -> openvpn-msg.h requests on the
 * service channel, from inside openvpn (no fork/exec, no execve size limit).
 *
 * It is the C twin of iservice.hook (the script hook, kept as the fallback and as the
 * reference): for the same environment it must send exactly the messages
 * hook.messages_for() computes, in the same order, with the same bytes (only the
 * message ids differ: random first id, like the hook).  tests/unit/test_plugin.py
 * checks that differentially.  Where hook.py relies on Python semantics (ipaddress
 * parsing, str.strip()/split()/lower()/upper() on Unicode text, the DNS name rules of
 * policy/dns.py) this file re-implements exactly those rules; every such place names
 * the Python function it mirrors.
 *
 * Usage (set by the service): --plugin iservice_plugin.so CHANNEL_FD
 * Events: up, route-up, route-pre-down, down.  A refused message or a broken channel
 * makes the call return OPENVPN_PLUGIN_FUNC_ERROR (an up failure stops openvpn), like
 * the hook's exit status 1.  An environment the hook rejects (ValueError/KeyError)
 * fails the call and sends nothing.
 *
 * Layouts: the OpenVPN 2.7 openvpn-msg.h (see iservice/wire/msg.py), x64,
 * little-endian; defined here by offsets, not by the 2.6 header's structs.
 *
 * Nothing here is trusted by the service: it checks every message again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
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

#define PLUGIN_NAME "iservice-plugin"
/* built with -fvisibility=hidden: only openvpn's entry points are exported */
#define EXPORT __attribute__((visibility("default")))

/* ---------------------------------------------------------------- wire format */

enum {
    T_ACK = 0, T_ADD_ADDRESS = 1, T_DEL_ADDRESS = 2, T_ADD_ROUTE = 3, T_DEL_ROUTE = 4,
    T_ADD_DNS_CFG = 5, T_DEL_DNS_CFG = 6, T_ADD_NRPT_CFG = 7, T_DEL_NRPT_CFG = 8,
    T_ADD_WFP_BLOCK = 12, T_REGISTER_DNS = 14, T_SET_MTU = 17,
    T_DEL_TUN_ROUTES = 0x100, /* iservice extension */
};
#define WIRE_AF_INET 2
#define WIRE_AF_INET6 23
#define IFACE_INDEX_INVALID 0xFFFFFFFFu
#define HEADER_SIZE 24
#define ACK_SIZE 32
#define IFACE_NAME_SIZE 256
#define DOMAINS_SIZE 512
#define NRPT_ADDR_NUM 8
#define NRPT_ADDR_SIZE 48
#define MAX_DNS_ADDRS 4
#define SZ_ADDRESS 312
#define SZ_ROUTE 328
#define SZ_DNS 872
#define SZ_NRPT 1696
#define SZ_WFP 288
#define SZ_MTU 296
#define TIMEOUT_MS 60000 /* per wait, like the hook's selector timeout */
#define FACTS_MAX 65536

static const char *type_name(uint32_t t)
{
    switch (t) {
    case T_ADD_ADDRESS: return "add_address";
    case T_DEL_ADDRESS: return "del_address";
    case T_ADD_ROUTE: return "add_route";
    case T_DEL_ROUTE: return "del_route";
    case T_ADD_DNS_CFG: return "add_dns_cfg";
    case T_DEL_DNS_CFG: return "del_dns_cfg";
    case T_ADD_NRPT_CFG: return "add_nrpt_cfg";
    case T_DEL_NRPT_CFG: return "del_nrpt_cfg";
    case T_ADD_WFP_BLOCK: return "add_wfp_block";
    case T_REGISTER_DNS: return "register_dns";
    case T_SET_MTU: return "set_mtu";
    case T_DEL_TUN_ROUTES: return "iservice_del_tun_routes";
    default: return "unknown";
    }
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}

static void put16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* An IP address as hook.py's ipaddress objects carry it. */
typedef struct {
    int version;        /* 4 or 6 */
    unsigned char b[16]; /* network order; IPv4 in b[0..3] */
    const char *scope;  /* IPv6 scope id ("%x"), not NUL-terminated; NULL = none */
    size_t scope_len;
} ip_t;

typedef struct {
    uint32_t index;
    const char *name;
    size_t name_len;
} iface_t;

/* The messages of one event: fixed-size records back to back. */
typedef struct {
    unsigned char *buf;
    size_t len, cap;
    size_t *off; /* start of message i */
    size_t count, off_cap;
    int oom;
} msgs_t;

static unsigned char *msg_new(msgs_t *m, uint32_t type, uint32_t size)
{
    if (m->oom)
        return NULL;
    if (m->len + size > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 16384;
        while (cap < m->len + size)
            cap *= 2;
        unsigned char *nb = realloc(m->buf, cap);
        if (!nb) { m->oom = 1; return NULL; }
        m->buf = nb; m->cap = cap;
    }
    if (m->count == m->off_cap) {
        size_t cap = m->off_cap ? m->off_cap * 2 : 64;
        size_t *no = realloc(m->off, cap * sizeof *no);
        if (!no) { m->oom = 1; return NULL; }
        m->off = no; m->off_cap = cap;
    }
    unsigned char *p = m->buf + m->len;
    memset(p, 0, size);
    put32(p, type);
    put32(p + 8, size); /* uint64 size: the high half stays 0 */
    m->off[m->count++] = m->len;
    m->len += size;
    return p;
}

static uint32_t msg_size(const msgs_t *m, size_t i)
{
    return get32(m->buf + m->off[i] + 8);
}

static void put_iface(unsigned char *p, const iface_t *ifc)
{
    put32(p, ifc->index);
    memcpy(p + 4, ifc->name, ifc->name_len); /* checked < 256 in get_iface */
}

static void put_addr16(unsigned char *p, const ip_t *a)
{
    memcpy(p, a->b, a->version == 4 ? 4 : 16);
}

static uint16_t wire_family(int version)
{
    return version == 4 ? WIRE_AF_INET : WIRE_AF_INET6;
}

/* ---------------------------------------------------------------- errors, logging */

typedef struct {
    plugin_log_t log;
    int fd;
} context_t;

typedef struct {
    context_t *ctx;
    char error[512]; /* first reason the environment is bad ("" = fine) */
} run_t;

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

static void fail(run_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fail(run_t *r, const char *fmt, ...)
{
    if (r->error[0])
        return; /* the first reason is the one reported */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->error, sizeof r->error, fmt, ap);
    va_end(ap);
    if (!r->error[0])
        snprintf(r->error, sizeof r->error, "bad value");
}

/* Text from the environment for a log line: printable ASCII kept, the rest \xNN (a
 * pushed name must not be able to start a new line in openvpn's log). */
static void quote(char *out, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    if (cap < 8)
        return;
    out[o++] = '\'';
    for (size_t i = 0; i < n && o + 6 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
    }
    out[o++] = '\'';
    out[o] = 0;
}

/* ---------------------------------------------------------------- the environment */

typedef struct {
    const char *key;
    size_t key_len;
    const char *val;
} slot_t;

typedef struct {
    slot_t *slots;
    size_t mask;
    const char *const *envp;
} env_t;

static uint64_t hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static int env_init(env_t *e, const char *const *envp)
{
    size_t n = 0;
    while (envp && envp[n])
        n++;
    size_t cap = 64;
    while (cap < 2 * n + 2)
        cap *= 2;
    e->slots = calloc(cap, sizeof *e->slots);
    if (!e->slots)
        return -1;
    e->mask = cap - 1;
    e->envp = envp;
    for (size_t i = 0; i < n; i++) {
        const char *eq = strchr(envp[i], '=');
        if (!eq)
            continue;
        size_t kl = (size_t)(eq - envp[i]);
        size_t j = hash(envp[i], kl) & e->mask;
        while (e->slots[j].key) {
            if (e->slots[j].key_len == kl && !memcmp(e->slots[j].key, envp[i], kl))
                break; /* the first wins, as in Python's os.environ */
            j = (j + 1) & e->mask;
        }
        if (!e->slots[j].key) {
            e->slots[j].key = envp[i];
            e->slots[j].key_len = kl;
            e->slots[j].val = eq + 1;
        }
    }
    return 0;
}

static const char *env_get(const env_t *e, const char *key)
{
    size_t kl = strlen(key);
    size_t j = hash(key, kl) & e->mask;
    while (e->slots[j].key) {
        if (e->slots[j].key_len == kl && !memcmp(e->slots[j].key, key, kl))
            return e->slots[j].val;
        j = (j + 1) & e->mask;
    }
    return NULL;
}

static const char *env_getf(const env_t *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static const char *env_getf(const env_t *e, const char *fmt, ...)
{
    char key[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(key, sizeof key, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof key)
        return NULL;
    return env_get(e, key);
}

/* env.get(k) truthy: present and not empty */
static int nonempty(const char *v) { return v && *v; }

/* ---------------------------------------------------------------- Unicode text */

/* One code point of UTF-8 at s[*i]; an invalid byte comes back as 0xDC00+byte (what
 * Python's surrogateescape makes of it: never a space, digit or letter). */
static uint32_t next_cp(const char *s, size_t n, size_t *i)
{
    const unsigned char *u = (const unsigned char *)s;
    unsigned char c = u[*i];
    if (c < 0x80) { (*i)++; return c; }
    int len = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 ? (c < 0xF0 ? 3 : 0) : c >= 0xC2 ? 2 : 0;
    if (len && *i + (size_t)len <= n) {
        uint32_t cp = c & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
        int ok = 1;
        for (int k = 1; k < len; k++) {
            if ((u[*i + (size_t)k] & 0xC0) != 0x80) { ok = 0; break; }
            cp = cp << 6 | (u[*i + (size_t)k] & 0x3F);
        }
        if (ok && ((len == 3 && cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) ||
                   (len == 4 && cp >= 0x10000 && cp <= 0x10FFFF) || len == 2)) {
            *i += (size_t)len;
            return cp;
        }
    }
    (*i)++;
    return 0xDC00 + c;
}

static int valid_utf8(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint32_t cp = next_cp(s, n, &i);
        if (cp >= 0xDC80 && cp <= 0xDCFF) /* an escaped byte: real surrogates never decode */
            return 0;
    }
    return 1;
}

/* str.isspace() */
static int py_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/* str.strip(): [*b, *e) without leading and trailing white space */
static void py_strip(const char *s, size_t n, size_t *b, size_t *e)
{
    size_t i = 0, start = n, end = 0;
    while (i < n) {
        size_t at = i;
        if (!py_space(next_cp(s, n, &i))) {
            if (start == n)
                start = at;
            end = i;
        }
    }
    if (start == n) { *b = *e = 0; return; }
    *b = start; *e = end;
}

/* str.split(), one word at a time: the next word at or after *i, as [*start, *end);
 * returns 0 when there is none */
static int py_word(const char *s, size_t n, size_t *i, size_t *start, size_t *end)
{
    while (*i < n) {
        size_t at = *i;
        if (py_space(next_cp(s, n, i)))
            continue;
        *start = at;
        *end = *i;
        while (*i < n) {
            size_t at2 = *i;
            if (py_space(next_cp(s, n, i))) { *i = at2; break; }
            *end = *i;
        }
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- numbers */

/* hook._int: -?[0-9]+ (ASCII), as an int32 (every field it fills is one; larger
 * values fail the dataclass check in hook.py, so they fail here too). */
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

/* ---------------------------------------------------------------- ipaddress */

static int all_ascii_digits(const char *s, size_t n)
{
    if (!n) return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9') return 0;
    return 1;
}

static int memchr_(const char *s, size_t n, char c) { return n && memchr(s, c, n) != NULL; }

/* IPv4Address._ip_int_from_string */
static int v4_int(const char *s, size_t n, uint32_t *out)
{
    if (!n) return -1;
    uint32_t v = 0;
    int octets = 0;
    size_t i = 0;
    while (1) {
        size_t start = i;
        while (i < n && s[i] != '.') i++;
        size_t len = i - start;
        if (!all_ascii_digits(s + start, len) || len > 3) return -1;
        if (len > 1 && s[start] == '0') return -1;
        unsigned o = 0;
        for (size_t k = 0; k < len; k++) o = o * 10 + (unsigned)(s[start + k] - '0');
        if (o > 255) return -1;
        v = v << 8 | o;
        octets++;
        if (octets > 4) return -1;
        if (i == n) break;
        i++; /* the dot */
    }
    if (octets != 4) return -1;
    *out = v;
    return 0;
}

/* IPv4Address(text) */
static int parse_v4(const char *s, size_t n, ip_t *a)
{
    uint32_t v;
    if (memchr_(s, n, '/') || v4_int(s, n, &v)) return -1;
    memset(a, 0, sizeof *a);
    a->version = 4;
    a->b[0] = (unsigned char)(v >> 24); a->b[1] = (unsigned char)(v >> 16);
    a->b[2] = (unsigned char)(v >> 8); a->b[3] = (unsigned char)v;
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* IPv6Address._parse_hextet */
static int hextet(const char *s, size_t n, unsigned *out)
{
    if (!n || n > 4) return -1; /* "" fails int("", 16) */
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        int h = hexval(s[i]);
        if (h < 0) return -1;
        v = v << 4 | (unsigned)h;
    }
    *out = v;
    return 0;
}

/* IPv6Address._ip_int_from_string (without the scope id) */
static int v6_bytes(const char *s, size_t n, unsigned char b[16])
{
    if (!n) return -1;
    /* split(':'): at most 9 parts are accepted, so count and bound first */
    size_t ps[10][2];
    size_t np = 0, start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == ':') {
            if (np == 10) return -1; /* more than 9 parts, even with an IPv4 tail */
            ps[np][0] = start; ps[np][1] = i - start; np++;
            start = i + 1;
        }
    }
    if (np < 3) return -1;
    unsigned vals[10];
    int literal[10] = {0}; /* parts that are already numbers (from an IPv4 tail) */
    size_t last = np - 1;
    if (memchr_(s + ps[last][0], ps[last][1], '.')) {
        uint32_t v4;
        if (memchr_(s + ps[last][0], ps[last][1], '/') ||
            v4_int(s + ps[last][0], ps[last][1], &v4))
            return -1;
        if (np == 10) return -1;
        vals[last] = v4 >> 16; literal[last] = 1;
        ps[np][0] = ps[np][1] = 1; /* non-empty marker */
        vals[np] = v4 & 0xFFFF; literal[np] = 1;
        np++;
    }
    if (np > 9) return -1;
    long skip = -1;
    for (size_t i = 1; i + 1 < np; i++) {
        if (!literal[i] && ps[i][1] == 0) {
            if (skip >= 0) return -1;
            skip = (long)i;
        }
    }
    size_t hi, lo, skipped;
    int empty0 = !literal[0] && ps[0][1] == 0;
    int emptyl = !literal[np - 1] && ps[np - 1][1] == 0;
    if (skip >= 0) {
        hi = (size_t)skip;
        lo = np - (size_t)skip - 1;
        if (empty0) { hi--; if (hi) return -1; }
        if (emptyl) { lo--; if (lo) return -1; }
        if (hi + lo > 7) return -1;
        skipped = 8 - (hi + lo);
    } else {
        if (np != 8 || empty0 || emptyl) return -1;
        hi = np; lo = 0; skipped = 0;
    }
    (void)skipped;
    memset(b, 0, 16);
    size_t k = 0;
    for (size_t i = 0; i < hi; i++, k++) {
        unsigned v;
        if (literal[i]) v = vals[i];
        else if (hextet(s + ps[i][0], ps[i][1], &v)) return -1;
        b[2 * k] = (unsigned char)(v >> 8); b[2 * k + 1] = (unsigned char)v;
    }
    k = 8 - lo;
    for (size_t i = np - lo; i < np; i++, k++) {
        unsigned v;
        if (literal[i]) v = vals[i];
        else if (hextet(s + ps[i][0], ps[i][1], &v)) return -1;
        b[2 * k] = (unsigned char)(v >> 8); b[2 * k + 1] = (unsigned char)v;
    }
    return 0;
}

/* IPv6Address(text): '/' refused, "%scope" split off (non-empty, no second '%') */
static int parse_v6(const char *s, size_t n, ip_t *a)
{
    if (memchr_(s, n, '/')) return -1;
    memset(a, 0, sizeof *a);
    const char *pct = n ? memchr(s, '%', n) : NULL;
    size_t an = n;
    if (pct) {
        an = (size_t)(pct - s);
        a->scope = pct + 1;
        a->scope_len = n - an - 1;
        if (!a->scope_len || memchr_(a->scope, a->scope_len, '%')) return -1;
    }
    if (v6_bytes(s, an, a->b)) return -1;
    a->version = 6;
    return 0;
}

/* ipaddress.ip_address(text) */
static int parse_ip(const char *s, size_t n, ip_t *a)
{
    if (!parse_v4(s, n, a)) return 0;
    return parse_v6(s, n, a);
}

static int ip_eq(const ip_t *x, const ip_t *y)
{
    if (x->version != y->version || memcmp(x->b, y->b, 16)) return 0;
    if (!x->scope != !y->scope) return 0;
    return !x->scope || (x->scope_len == y->scope_len && !memcmp(x->scope, y->scope,
                                                                 x->scope_len));
}

/* _BaseNetwork._prefix_from_prefix_string: ASCII digits, 0..max */
static int prefix_string(const char *s, size_t n, int max)
{
    if (!all_ascii_digits(s, n)) return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        v = v * 10 + (s[i] - '0');
        if (v > max) return -1;
    }
    return (int)v;
}

static int prefix_of_mask(uint32_t m)
{
    int tz = 0;
    while (tz < 32 && !(m >> tz & 1)) tz++;
    int len = 32 - tz;
    uint32_t ones = tz == 32 ? 0 : m >> tz;
    uint32_t want = len == 32 ? 0xFFFFFFFFu : ((uint32_t)1 << len) - 1;
    return ones == want ? len : -1;
}

/* IPv4Network._make_netmask(text): a prefix length, a netmask or a hostmask */
static int v4_mask(const char *s, size_t n)
{
    int p = prefix_string(s, n, 32);
    if (p >= 0) return p;
    uint32_t v;
    if (v4_int(s, n, &v)) return -1;
    p = prefix_of_mask(v);
    if (p >= 0) return p;
    return prefix_of_mask(v ^ 0xFFFFFFFFu);
}

static void mask_bytes(unsigned char *b, size_t nbytes, int prefix)
{
    for (size_t i = 0; i < nbytes; i++) {
        int bits = prefix - (int)i * 8;
        unsigned char m = bits >= 8 ? 0xFF : bits <= 0 ? 0 : (unsigned char)(0xFF << (8 - bits));
        b[i] &= m;
    }
}

/* IPv4Network(f"{network}/{netmask}", strict=False) */
static int v4_network(const char *net, const char *mask, ip_t *a, int *prefix)
{
    size_t nn = strlen(net), mn = strlen(mask);
    if (memchr_(net, nn, '/') || memchr_(mask, mn, '/')) return -1; /* >2 parts */
    if (parse_v4(net, nn, a)) return -1;
    int p = v4_mask(mask, mn);
    if (p < 0) return -1;
    mask_bytes(a->b, 4, p);
    *prefix = p;
    return 0;
}

/* IPv6Network(text, strict=False); a scope id survives only when no host bits
 * were cleared (then RouteMsg refuses it: *scoped is set) */
static int v6_network(const char *s, ip_t *a, int *prefix)
{
    size_t n = strlen(s);
    const char *slash = memchr(s, '/', n);
    size_t an = n;
    int p = 128;
    if (slash) {
        an = (size_t)(slash - s);
        const char *ps = slash + 1;
        size_t pn = n - an - 1;
        if (memchr_(ps, pn, '/')) return -1;
        if (parse_v6(s, an, a)) return -1;
        p = prefix_string(ps, pn, 128);
        if (p < 0) return -1;
    } else if (parse_v6(s, n, a)) {
        return -1;
    }
    unsigned char before[16];
    memcpy(before, a->b, 16);
    mask_bytes(a->b, 16, p);
    if (memcmp(before, a->b, 16)) a->scope = NULL; /* a new IPv6Address(int) */
    *prefix = p;
    return 0;
}

/* ---------------------------------------------------------------- message builders */

static void add_address(run_t *r, msgs_t *m, uint32_t type, const ip_t *a, int32_t prefix,
                        const iface_t *ifc)
{
    if (a->scope) { fail(r, "address has a scope id, which the wire format cannot carry"); return; }
    unsigned char *p = msg_new(m, type, SZ_ADDRESS);
    if (!p) return;
    put16(p + 24, wire_family(a->version));
    put_addr16(p + 28, a);
    put32(p + 44, (uint32_t)prefix);
    put_iface(p + 48, ifc);
}

static void add_route(run_t *r, msgs_t *m, uint32_t type, const ip_t *dst, int32_t prefix,
                      const ip_t *gw, const iface_t *ifc, int32_t metric)
{
    if (dst->scope || gw->scope) { fail(r, "route address has a scope id"); return; }
    if (dst->version != gw->version) { fail(r, "gateway of another IP version"); return; }
    unsigned char *p = msg_new(m, type, SZ_ROUTE);
    if (!p) return;
    put16(p + 24, wire_family(dst->version));
    put_addr16(p + 28, dst);
    put32(p + 44, (uint32_t)prefix);
    put_addr16(p + 48, gw);
    put_iface(p + 64, ifc);
    put32(p + 324, (uint32_t)metric);
}

static const iface_t UNSET = {IFACE_INDEX_INVALID, "", 0};

/* hook._iface */
static int get_iface(run_t *r, const env_t *e, iface_t *ifc)
{
    const char *dev = env_get(e, "dev");
    if (!dev) dev = "";
    size_t n = strlen(dev);
    if (n >= IFACE_NAME_SIZE) { fail(r, "iface.name is %zu bytes; the field holds 255", n); return -1; }
    if (!valid_utf8(dev, n)) { fail(r, "iface.name is not valid UTF-8"); return -1; }
    unsigned idx = *dev ? if_nametoindex(dev) : 0;
    ifc->index = idx ? idx : IFACE_INDEX_INVALID;
    ifc->name = dev;
    ifc->name_len = n;
    return 0;
}

/* hook._v4_address_messages */
static void v4_addresses(run_t *r, const env_t *e, msgs_t *m, int add, const iface_t *ifc)
{
    const char *local = env_get(e, "ifconfig_local");
    if (!nonempty(local)) return;
    uint32_t kind = add ? T_ADD_ADDRESS : T_DEL_ADDRESS;
    ip_t addr;
    if (parse_v4(local, strlen(local), &addr)) { fail(r, "bad ifconfig_local"); return; }
    const char *mask = env_get(e, "ifconfig_netmask");
    const char *remote_s = env_get(e, "ifconfig_remote");
    if (nonempty(mask)) {
        ip_t zero;
        int prefix;
        if (v4_network("0.0.0.0", mask, &zero, &prefix)) { fail(r, "bad ifconfig_netmask"); return; }
        add_address(r, m, kind, &addr, prefix, ifc);
    } else if (nonempty(remote_s)) {
        ip_t remote;
        if (parse_v4(remote_s, strlen(remote_s), &remote)) { fail(r, "bad ifconfig_remote"); return; }
        if (!memcmp(addr.b, remote.b, 3) && (addr.b[3] & 0xFC) == (remote.b[3] & 0xFC)) {
            add_address(r, m, kind, &addr, 30, ifc); /* net30 */
        } else { /* p2p: local/32 plus a host route to the peer through the tun */
            ip_t zero = {.version = 4};
            add_address(r, m, kind, &addr, 32, ifc);
            add_route(r, m, add ? T_ADD_ROUTE : T_DEL_ROUTE, &remote, 32, &zero, ifc, -1);
        }
    } else {
        add_address(r, m, kind, &addr, 32, ifc);
    }
}

/* hook._v6_address_messages */
static void v6_addresses(run_t *r, const env_t *e, msgs_t *m, int add, const iface_t *ifc)
{
    const char *local = env_get(e, "ifconfig_ipv6_local");
    if (!nonempty(local)) return;
    const char *bits_s = env_get(e, "ifconfig_ipv6_netbits");
    int32_t bits;
    if (parse_int32(bits_s ? bits_s : "128", &bits)) { fail(r, "bad ifconfig_ipv6_netbits"); return; }
    ip_t addr;
    if (parse_v6(local, strlen(local), &addr)) { fail(r, "bad ifconfig_ipv6_local"); return; }
    add_address(r, m, add ? T_ADD_ADDRESS : T_DEL_ADDRESS, &addr, bits, ifc);
}

static int metric_of(run_t *r, const char *s, int32_t *metric)
{
    if (parse_int32(nonempty(s) ? s : "-1", metric)) { fail(r, "bad route metric"); return -1; }
    return 0;
}

/* hook.route_messages */
static void routes(run_t *r, const env_t *e, msgs_t *m, uint32_t kind, const iface_t *ifc)
{
    const char *net_gw = env_get(e, "route_net_gateway");
    for (unsigned long n = 1; !r->error[0] && !m->oom; n++) {
        const char *network = env_getf(e, "route_network_%lu", n);
        if (!network) break;
        const char *netmask = env_getf(e, "route_netmask_%lu", n);
        const char *gw_text = env_getf(e, "route_gateway_%lu", n);
        if (!gw_text) gw_text = "";
        ip_t net, gw = {.version = 4};
        int prefix;
        int32_t metric;
        if (v4_network(network, netmask ? netmask : "255.255.255.255", &net, &prefix)) {
            fail(r, "bad route_network_%lu/route_netmask_%lu", n, n);
            return;
        }
        if (metric_of(r, env_getf(e, "route_metric_%lu", n), &metric)) return;
        if (*gw_text && parse_v4(gw_text, strlen(gw_text), &gw)) {
            fail(r, "bad route_gateway_%lu", n);
            return;
        }
        /* a route via the net gateway bypasses the tun */
        int bypass = nonempty(net_gw) && !strcmp(gw_text, net_gw);
        add_route(r, m, kind, &net, prefix, &gw, bypass ? &UNSET : ifc, metric);
    }
    const char *net_gw6 = env_get(e, "net_gateway_ipv6");
    for (unsigned long n = 1; !r->error[0] && !m->oom; n++) {
        const char *network = env_getf(e, "route_ipv6_network_%lu", n);
        if (!network) break;
        const char *gw_text = env_getf(e, "route_ipv6_gateway_%lu", n);
        if (!gw_text) gw_text = "";
        ip_t net, gw = {.version = 6};
        int prefix;
        int32_t metric;
        if (v6_network(network, &net, &prefix)) { fail(r, "bad route_ipv6_network_%lu", n); return; }
        if (*gw_text && parse_ip(gw_text, strlen(gw_text), &gw)) {
            fail(r, "bad route_ipv6_gateway_%lu", n);
            return;
        }
        if (metric_of(r, env_getf(e, "route_ipv6_metric_%lu", n), &metric)) return;
        const iface_t *via = ifc;
        if (nonempty(net_gw6) && *gw_text) {
            ip_t g6;
            if (parse_ip(net_gw6, strlen(net_gw6), &g6)) { fail(r, "bad net_gateway_ipv6"); return; }
            if (ip_eq(&g6, &gw)) via = &UNSET;
        }
        add_route(r, m, kind, &net, prefix, &gw, via, metric);
    }
}

/* ---------------------------------------------------------------- facts */

typedef struct {
    int redirect; /* 0 = none */
    int ipv4, ipv6, local;
    int block_outside_dns;
} facts_t;

/* policy.redirect.decode_facts: exactly FACTS_FORMAT, else nothing known */
static facts_t read_facts(const env_t *e)
{
    facts_t f = {0};
    const char *fd_s = env_get(e, "ISERVICE_FACTS_FD");
    int32_t fd;
    if (!fd_s || parse_int32(fd_s, &fd))
        return f;
    static char buf[FACTS_MAX];
    ssize_t n = pread(fd, buf, sizeof buf, 0);
    if (n < 0)
        return f;
    while (n > 0 && buf[n - 1] == 0)
        n--;
    static const char head[] = "iservice-facts/1 redirect=";
    static const char mid[] = " block_outside_dns=";
    size_t h = sizeof head - 1, md = sizeof mid - 1;
    if ((size_t)n < h || memcmp(buf, head, h)) return f;
    size_t i = h;
    facts_t out = {0};
    if ((size_t)n > i && buf[i] == '-') {
        i++;
    } else {
        if ((size_t)n < i + 4) return f;
        for (int k = 0; k < 4; k++)
            if (buf[i + (size_t)k] != '0' && buf[i + (size_t)k] != '1') return f;
        out.redirect = 1;
        out.ipv4 = buf[i] == '1';
        out.ipv6 = buf[i + 1] == '1';
        out.local = buf[i + 2] == '1';
        i += 4;
    }
    if ((size_t)n != i + md + 2 || memcmp(buf + i, mid, md)) return f;
    i += md;
    if ((buf[i] != '0' && buf[i] != '1') || buf[i + 1] != '\n') return f;
    out.block_outside_dns = buf[i] == '1';
    return out;
}

/* hook.redirect_messages */
static void redirect(run_t *r, const env_t *e, msgs_t *m, uint32_t kind, const iface_t *ifc)
{
    const char *r4 = env_get(e, "route_redirect_gateway_ipv4");
    const char *r6 = env_get(e, "route_redirect_gateway_ipv6");
    int ipv4, ipv6, local = 0;
    if (r4 || r6) { /* openvpn >= 2.7 says it itself */
        ipv4 = r4 && (!strcmp(r4, "1") || !strcmp(r4, "2"));
        ipv6 = r6 && (!strcmp(r6, "1") || !strcmp(r6, "2"));
    } else {
        facts_t f = read_facts(e);
        if (!f.redirect) return;
        ipv4 = f.ipv4; ipv6 = f.ipv6; local = f.local;
    }
    size_t first = m->count;
    const char *trusted = env_get(e, "trusted_ip6");
    if (!nonempty(trusted)) trusted = env_get(e, "trusted_ip");
    if (!trusted) trusted = "";
    int v6 = strchr(trusted, ':') != NULL;
    const char *net_gw = env_get(e, v6 ? "net_gateway_ipv6" : "route_net_gateway");
    int wants = v6 ? ipv6 : ipv4;
    if (*trusted && nonempty(net_gw) && wants && !local) {
        ip_t host, gw;
        if (parse_ip(trusted, strlen(trusted), &host)) { fail(r, "bad trusted_ip"); return; }
        if (parse_ip(net_gw, strlen(net_gw), &gw)) { fail(r, "bad net gateway"); return; }
        add_route(r, m, kind, &host, host.version == 4 ? 32 : 128, &gw, &UNSET, -1);
    }
    if (ipv4) {
        const char *vg = env_get(e, "route_vpn_gateway");
        ip_t vpn_gw = {.version = 4};
        if (nonempty(vg) && parse_v4(vg, strlen(vg), &vpn_gw)) { fail(r, "bad route_vpn_gateway"); return; }
        ip_t half = {.version = 4};
        add_route(r, m, kind, &half, 1, &vpn_gw, ifc, -1);
        half.b[0] = 128;
        add_route(r, m, kind, &half, 1, &vpn_gw, ifc, -1);
    }
    if (kind == T_DEL_ROUTE && !m->oom) { /* deleted in reverse order */
        for (size_t a = first, b = m->count; a + 1 < b; a++, b--) {
            size_t t = m->off[a]; m->off[a] = m->off[b - 1]; m->off[b - 1] = t;
        }
    }
}

/* ---------------------------------------------------------------- DNS */

#define MAX_LIST 4096 /* numbered DNS variables read per list (openvpn pushes far fewer) */
#define MAX_SERVERS MAX_LIST

/* policy.dns.parse_domain: strip, lower, one leading and trailing dot dropped,
 * labels [a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?, at most 253 characters */
static int parse_domain(const char *s, size_t n, char *out, size_t *out_len)
{
    size_t b, e;
    py_strip(s, n, &b, &e);
    char name[256];
    size_t len = 0;
    for (size_t i = b; i < e;) {
        uint32_t c = next_cp(s, e, &i);
        if (c == 0x212A) c = 'k'; /* KELVIN SIGN: its lower() is ASCII "k" */
        else if (c >= 'A' && c <= 'Z') c += 32;
        else if (c >= 0x80) return -1; /* lower() stays non-ASCII: no label matches */
        if (len == sizeof name) return -1;
        name[len++] = (char)c;
    }
    size_t start = 0;
    if (len && name[0] == '.') start = 1;
    if (len > start && name[len - 1] == '.') len--;
    if (len <= start || len - start > 253) return -1;
    for (size_t i = start; i < len;) {
        size_t j = i;
        while (j < len && name[j] != '.') j++;
        size_t ll = j - i;
        if (ll < 1 || ll > 63) return -1;
        for (size_t k = i; k < j; k++) {
            char c = name[k];
            int ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
                     (c == '-' && k != i && k != j - 1);
            if (!ok) return -1;
        }
        if (j == len) break;
        i = j + 1;
        if (i == len) return -1; /* empty last label */
    }
    *out_len = len - start;
    memcpy(out, name + start, *out_len);
    return 0;
}

/* hook._clean_domains: the names that parse, unique, while the list fits 511 bytes */
static void clean_domains(run_t *r, const char *const *names, const size_t *lens, size_t count,
                          char out[DOMAINS_SIZE])
{
    size_t len = 0;
    out[0] = 0;
    for (size_t i = 0; i < count; i++) {
        char clean[256];
        size_t cl;
        if (parse_domain(names[i], lens[i], clean, &cl)) {
            char q[300];
            quote(q, sizeof q, names[i], lens[i]);
            logf_(r->ctx, PLOG_NOTE, "ignoring the domain %s", q);
            continue;
        }
        int dup = 0;
        for (size_t a = 0; a < len;) { /* is it already in the list? */
            size_t z = a;
            while (z < len && out[z] != ',') z++;
            if (z - a == cl && !memcmp(out + a, clean, cl)) { dup = 1; break; }
            a = z + 1;
        }
        size_t need = len + (len ? 1 : 0) + cl;
        if (dup || need >= DOMAINS_SIZE) continue;
        if (len) out[len++] = ',';
        memcpy(out + len, clean, cl);
        len += cl;
        out[len] = 0;
    }
}

/* policy.dns.parse_server + check_server */
static int parse_server(const char *s, size_t n, ip_t *a)
{
    size_t b, e;
    py_strip(s, n, &b, &e);
    if (parse_ip(s + b, e - b, a)) return -1;
    static const unsigned char zero[16];
    if (a->version == 4) {
        if (!memcmp(a->b, zero, 4) || (a->b[0] & 0xF0) == 0xE0 || a->b[0] == 127) return -1;
    } else {
        static const unsigned char one[16] = {[15] = 1};
        static const unsigned char mapped[12] = {[10] = 0xFF, [11] = 0xFF};
        if (!memcmp(a->b, zero, 16) || a->b[0] == 0xFF || !memcmp(a->b, one, 16) ||
            (a->b[0] == 0xFE && (a->b[1] & 0xC0) == 0x80) || !memcmp(a->b, mapped, 12))
            return -1;
    }
    return 0;
}


/* hook._servers: parsed, unique, in order */
static size_t servers(run_t *r, const char *const *texts, const size_t *lens, size_t count,
                      ip_t *out)
{
    size_t n = 0;
    for (size_t i = 0; i < count; i++) {
        ip_t a;
        if (parse_server(texts[i], lens[i], &a)) {
            char q[300];
            quote(q, sizeof q, texts[i], lens[i]);
            logf_(r->ctx, PLOG_NOTE, "ignoring the DNS server %s", q);
            continue;
        }
        int dup = 0;
        for (size_t k = 0; k < n && !dup; k++) dup = ip_eq(&out[k], &a);
        if (!dup && n < MAX_SERVERS) out[n++] = a;
    }
    return n;
}

/* str(IPv4Address | IPv6Address), scope id included */
static void ip_text(const ip_t *a, char *out, size_t cap)
{
    if (a->version == 4) {
        snprintf(out, cap, "%u.%u.%u.%u", a->b[0], a->b[1], a->b[2], a->b[3]);
        return;
    }
    unsigned h[8];
    for (int i = 0; i < 8; i++) h[i] = (unsigned)a->b[2 * i] << 8 | a->b[2 * i + 1];
    int best = -1, best_len = 0; /* _compress_hextets: the first longest run of 0s, > 1 */
    for (int i = 0; i < 8;) {
        if (h[i]) { i++; continue; }
        int j = i;
        while (j < 8 && !h[j]) j++;
        if (j - i > best_len) { best = i; best_len = j - i; }
        i = j;
    }
    if (best_len < 2) best = -1;
    size_t o = 0;
    for (int i = 0; i < 8 && o < cap; i++) {
        if (i == best) {
            o += (size_t)snprintf(out + o, cap - o, i == 0 ? "::" : ":");
            i += best_len - 1;
            continue;
        }
        o += (size_t)snprintf(out + o, cap - o, "%x%s", h[i], i < 7 ? ":" : "");
    }
    if (o < cap && a->scope)
        snprintf(out + o, cap - o, "%%%.*s", (int)a->scope_len, a->scope);
}

/* Does words[1].upper() equal want?  str.upper() maps a few non-ASCII letters to ASCII
 * ones (ß -> SS, ı -> I, ſ -> S, the ligatures ﬀ…ﬆ); the rest stays non-ASCII. */
static int upper_is(const char *s, size_t n, const char *want)
{
    static const struct { uint32_t cp; const char *up; } special[] = {
        {0xDF, "SS"}, {0x131, "I"}, {0x17F, "S"}, {0xFB00, "FF"}, {0xFB01, "FI"},
        {0xFB02, "FL"}, {0xFB03, "FFI"}, {0xFB04, "FFL"}, {0xFB05, "ST"}, {0xFB06, "ST"},
    };
    size_t w = 0, wl = strlen(want);
    for (size_t i = 0; i < n;) {
        uint32_t c = next_cp(s, n, &i);
        char one[2] = {0, 0};
        const char *up = NULL;
        if (c < 0x80) {
            one[0] = (char)(c >= 'a' && c <= 'z' ? c - 32 : c);
            up = one;
        } else {
            for (size_t k = 0; k < sizeof special / sizeof *special; k++)
                if (special[k].cp == c) up = special[k].up;
            if (!up) return 0;
        }
        size_t ul = strlen(up);
        if (w + ul > wl || memcmp(want + w, up, ul)) return 0;
        w += ul;
    }
    return w == wl;
}

static void put_text(unsigned char *p, const char *s)
{
    memcpy(p, s, strlen(s)); /* callers checked the length against the field */
}


/* hook.dns_messages */
static void dns(run_t *r, const env_t *e, msgs_t *m, int add, const iface_t *ifc)
{
    /* the dns_server_N ids, lowest first (N as a canonical decimal: "01" is 1) */
    static char ids[MAX_LIST][24];
    size_t nids = 0;
    for (size_t i = 0; e->envp && e->envp[i]; i++) {
        const char *k = e->envp[i];
        const char *eq = strchr(k, '=');
        if (!eq || strncmp(k, "dns_server_", 11)) continue;
        const char *d = k + 11;
        size_t dl = 0;
        while (d + dl < eq && d[dl] != '_') dl++;
        if (!all_ascii_digits(d, dl)) continue;
        while (dl > 1 && *d == '0') { d++; dl--; }
        if (dl >= sizeof ids[0]) { fail(r, "dns_server number too large"); return; }
        int seen = 0;
        for (size_t j = 0; j < nids && !seen; j++)
            seen = strlen(ids[j]) == dl && !memcmp(ids[j], d, dl);
        if (seen) continue;
        if (nids == MAX_LIST) continue;
        memcpy(ids[nids], d, dl);
        ids[nids][dl] = 0;
        nids++;
    }
    for (size_t a = 1; a < nids; a++) /* numeric order: by length, then by digits */
        for (size_t b = a; b > 0; b--) {
            size_t lb = strlen(ids[b]), lp = strlen(ids[b - 1]);
            if (lb < lp || (lb == lp && strcmp(ids[b], ids[b - 1]) < 0)) {
                char t[24];
                memcpy(t, ids[b], 24); memcpy(ids[b], ids[b - 1], 24); memcpy(ids[b - 1], t, 24);
            } else {
                break;
            }
        }
    static const char *texts[MAX_LIST];
    static size_t lens[MAX_LIST];
    static ip_t addrs[MAX_SERVERS];
    for (size_t j = 0; j < nids; j++) {
        size_t count = 0;
        for (unsigned long i = 1; count < MAX_LIST; i++) {
            const char *v = env_getf(e, "dns_server_%s_address_%lu", ids[j], i);
            if (!v) break;
            texts[count] = v; lens[count] = strlen(v); count++;
        }
        size_t na = servers(r, texts, lens, count, addrs);
        if (!na) continue;
        char resolve[DOMAINS_SIZE], search[DOMAINS_SIZE];
        count = 0;
        for (unsigned long i = 1; count < MAX_LIST; i++) {
            const char *v = env_getf(e, "dns_server_%s_resolve_domain_%lu", ids[j], i);
            if (!v) break;
            texts[count] = v; lens[count] = strlen(v); count++;
        }
        clean_domains(r, texts, lens, count, resolve);
        count = 0;
        for (unsigned long i = 1; count < MAX_LIST; i++) {
            const char *v = env_getf(e, "dns_search_domain_%lu", i);
            if (!v) break;
            texts[count] = v; lens[count] = strlen(v); count++;
        }
        clean_domains(r, texts, lens, count, search);
        const char *dnssec = env_getf(e, "dns_server_%s_dnssec", ids[j]);
        char text[NRPT_ADDR_NUM][NRPT_ADDR_SIZE + 64];
        size_t nt = na < NRPT_ADDR_NUM ? na : NRPT_ADDR_NUM;
        for (size_t k = 0; k < nt; k++) {
            ip_text(&addrs[k], text[k], sizeof text[k]);
            if (strlen(text[k]) >= NRPT_ADDR_SIZE) { fail(r, "nrpt address too long"); return; }
        }
        unsigned char *p = msg_new(m, add ? T_ADD_NRPT_CFG : T_DEL_NRPT_CFG, SZ_NRPT);
        if (!p) return;
        put_iface(p + 24, ifc);
        for (size_t k = 0; k < nt; k++) put_text(p + 284 + k * NRPT_ADDR_SIZE, text[k]);
        put_text(p + 668, resolve);
        put_text(p + 1180, search);
        put32(p + 1692, dnssec && !strcmp(dnssec, "yes") ? 1 : 0);
        return;
    }
    /* dhcp-option foreign options */
    static const char *srv[MAX_LIST];
    static size_t srv_len[MAX_LIST];
    static char *doms[MAX_LIST];
    static size_t dom_len[MAX_LIST];
    size_t ns = 0, nd = 0;
    for (unsigned long n = 1; ; n++) {
        const char *v = env_getf(e, "foreign_option_%lu", n);
        if (!v) break;
        size_t vl = strlen(v);
        size_t w0b, w0e, w1b, w1e, w2b, w2e, pos = 0;
        if (!py_word(v, vl, &pos, &w0b, &w0e) || !py_word(v, vl, &pos, &w1b, &w1e) ||
            !py_word(v, vl, &pos, &w2b, &w2e))
            continue; /* fewer than 3 words */
        if (w0e - w0b != 11 || memcmp(v + w0b, "dhcp-option", 11)) continue;
        const char *opt = v + w1b;
        size_t ol = w1e - w1b;
        if (upper_is(opt, ol, "DNS") || upper_is(opt, ol, "DNS6")) {
            if (ns < MAX_LIST) { srv[ns] = v + w2b; srv_len[ns] = w2e - w2b; ns++; }
        } else if (upper_is(opt, ol, "DOMAIN") || upper_is(opt, ol, "ADAPTER_DOMAIN_SUFFIX") ||
                   upper_is(opt, ol, "DOMAIN-SEARCH")) {
            if (nd == MAX_LIST) continue;
            /* " ".join(words[2:]): one name; with blanks it is refused later anyway */
            char *joined = malloc(vl + 1);
            if (!joined) { m->oom = 1; break; }
            size_t o = w2e - w2b, wb, we;
            memcpy(joined, v + w2b, o);
            while (py_word(v, vl, &pos, &wb, &we)) {
                joined[o++] = ' ';
                memcpy(joined + o, v + wb, we - wb);
                o += we - wb;
            }
            doms[nd] = joined; dom_len[nd] = o; nd++;
        }
    }
    ip_t *as = addrs;
    size_t na = servers(r, srv, srv_len, ns, as);
    char domain_list[DOMAINS_SIZE];
    clean_domains(r, (const char *const *)doms, dom_len, nd, domain_list);
    for (size_t i = 0; i < nd; i++) free(doms[i]);
    ip_t v4[MAX_DNS_ADDRS], v6[MAX_DNS_ADDRS];
    size_t n4 = 0, n6 = 0;
    for (size_t i = 0; i < na; i++) {
        if (as[i].version == 4 && n4 < MAX_DNS_ADDRS) v4[n4++] = as[i];
        if (as[i].version == 6 && n6 < MAX_DNS_ADDRS) v6[n6++] = as[i];
    }
    uint32_t kind = add ? T_ADD_DNS_CFG : T_DEL_DNS_CFG;
    if (n4 || domain_list[0]) {
        unsigned char *p = msg_new(m, kind, SZ_DNS);
        if (!p) return;
        put_iface(p + 24, ifc);
        put_text(p + 284, domain_list);
        put16(p + 796, WIRE_AF_INET);
        put32(p + 800, (uint32_t)n4);
        for (size_t i = 0; i < n4; i++) put_addr16(p + 804 + 16 * i, &v4[i]);
    }
    if (n6) {
        for (size_t i = 0; i < n6; i++)
            if (v6[i].scope) { fail(r, "DNS server has a scope id"); return; }
        unsigned char *p = msg_new(m, kind, SZ_DNS);
        if (!p) return;
        put_iface(p + 24, ifc);
        put16(p + 796, WIRE_AF_INET6);
        put32(p + 800, (uint32_t)n6);
        for (size_t i = 0; i < n6; i++) put_addr16(p + 804 + 16 * i, &v6[i]);
    }
}

/* hook.block_messages */
static void block(run_t *r, const env_t *e, msgs_t *m, const iface_t *ifc)
{
    (void)r;
    uint32_t flags = 0;
    const char *ks = env_get(e, "ISERVICE_KILL_SWITCH");
    if (ks) {
        size_t b, end;
        py_strip(ks, strlen(ks), &b, &end);
        static const char *yes[] = {"1", "yes", "true", "on"};
        for (size_t k = 0; k < 4; k++)
            if (strlen(yes[k]) == end - b && !strncasecmp(ks + b, yes[k], end - b))
                flags |= 1;
    }
    if (read_facts(e).block_outside_dns)
        flags |= 2;
    if (!flags) return;
    unsigned char *p = msg_new(m, T_ADD_WFP_BLOCK, SZ_WFP);
    if (!p) return;
    put32(p + 24, flags);
    put_iface(p + 28, ifc);
}

/* hook.messages_for, by openvpn's plugin event instead of script_type; the up event's
 * add_wfp_block is left to handle() (see there) */
static void messages_for(run_t *r, const env_t *e, int event, msgs_t *m)
{
    iface_t ifc;
    if (get_iface(r, e, &ifc)) return;
    if (event == OPENVPN_PLUGIN_UP) {
        const char *mtu_s = env_get(e, "tun_mtu");
        if (nonempty(mtu_s)) {
            int32_t mtu;
            if (parse_int32(mtu_s, &mtu)) { fail(r, "bad tun_mtu"); return; }
            unsigned char *p = msg_new(m, T_SET_MTU, SZ_MTU);
            if (!p) return;
            put_iface(p + 24, &ifc);
            put16(p + 284, WIRE_AF_INET);
            put32(p + 288, (uint32_t)mtu);
        }
        v4_addresses(r, e, m, 1, &ifc);
        v6_addresses(r, e, m, 1, &ifc);
        size_t before = m->count;
        dns(r, e, m, 1, &ifc);
        if (m->count > before)
            msg_new(m, T_REGISTER_DNS, HEADER_SIZE);
    } else if (event == OPENVPN_PLUGIN_ROUTE_UP) {
        routes(r, e, m, T_ADD_ROUTE, &ifc);
        redirect(r, e, m, T_ADD_ROUTE, &ifc);
    } else if (event == OPENVPN_PLUGIN_ROUTE_PREDOWN) {
        redirect(r, e, m, T_DEL_ROUTE, &ifc);
        if (!env_get(e, "route_network_1") && !env_get(e, "route_ipv6_network_1"))
            /* openvpn takes its routes down without naming them (persist-tun, after a
             * restart whose pushed options changed): ask for all of the tun's routes */
            msg_new(m, T_DEL_TUN_ROUTES, HEADER_SIZE);
        else
            routes(r, e, m, T_DEL_ROUTE, &ifc);
    } else if (event == OPENVPN_PLUGIN_DOWN) {
        dns(r, e, m, 0, &ifc);
        v6_addresses(r, e, m, 0, &ifc);
        v4_addresses(r, e, m, 0, &ifc);
    }
}

/* ---------------------------------------------------------------- the exchange */

static double now_mono(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static uint32_t first_id(void)
{
    uint32_t first;
    if (getrandom(&first, sizeof first, 0) != (ssize_t)sizeof first)
        first = (uint32_t)time(NULL) ^ (uint32_t)getpid();
    return 1 + first % ((1u << 30) - 1); /* stale acks of an earlier call never match */
}

/* hook.exchange for messages from..count-1 (message i gets id first + i): send them
 * while reading acks (pipelined); errs[i] = the ack's error number.  Returns 0, or -1
 * with *why set (channel broken, timeout). */
static int exchange(int fd, msgs_t *m, size_t from, uint32_t first, int32_t *errs,
                    const char **why, int *why_errno)
{
    unsigned char *got = calloc(m->count ? m->count : 1, 1);
    if (!got) { *why = "out of memory"; *why_errno = 0; return -1; }
    for (size_t i = from; i < m->count; i++)
        put32(m->buf + m->off[i] + 16, first + (uint32_t)i);
    size_t sent = from, pending = m->count - from;
    int rc = 0;
    while (pending) {
        struct pollfd p = {.fd = fd, .events = POLLIN | (sent < m->count ? POLLOUT : 0)};
        int n = poll(&p, 1, TIMEOUT_MS);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { *why = "poll"; *why_errno = errno; rc = -1; break; }
        if (n == 0) { *why = "the service did not answer within 60 s"; *why_errno = 0; rc = -1; break; }
        if (p.revents & POLLNVAL) { *why = "no service channel"; *why_errno = EBADF; rc = -1; break; }
        if (p.revents & POLLOUT) {
            while (sent < m->count) {
                ssize_t w = send(fd, m->buf + m->off[sent], msg_size(m, sent),
                                 MSG_DONTWAIT | MSG_NOSIGNAL);
                if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
                if (w < 0 && errno == EINTR) continue;
                if (w < 0) { *why = "send"; *why_errno = errno; rc = -1; goto out; }
                sent++;
            }
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            while (1) {
                unsigned char ack[ACK_SIZE + 1];
                ssize_t n2 = recv(fd, ack, sizeof ack, MSG_DONTWAIT);
                if (n2 < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
                if (n2 < 0 && errno == EINTR) continue;
                if (n2 < 0) { *why = "recv"; *why_errno = errno; rc = -1; goto out; }
                if (n2 == 0) { *why = "the service closed the channel"; *why_errno = 0; rc = -1; goto out; }
                if (n2 != ACK_SIZE || get32(ack) != T_ACK || get32(ack + 8) != ACK_SIZE ||
                    get32(ack + 12) != 0) {
                    *why = "malformed ack from the service"; *why_errno = 0; rc = -1; goto out;
                }
                uint32_t id = get32(ack + 16);
                uint32_t i = id - first;
                if (id >= first && i >= from && i < m->count && !got[i]) {
                    got[i] = 1;
                    errs[i] = (int32_t)get32(ack + 24);
                    pending--;
                }
            }
        }
    }
out:
    free(got);
    return rc;
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
    run_t r = {.ctx = ctx};
    env_t e;
    msgs_t m = {0};
    int status = OPENVPN_PLUGIN_FUNC_SUCCESS;
    size_t refused = 0;
    if (env_init(&e, envp)) {
        logf_(ctx, PLOG_ERR, "out of memory");
        return OPENVPN_PLUGIN_FUNC_ERROR;
    }
    messages_for(&r, &e, event, &m);
    if (m.oom) {
        logf_(ctx, PLOG_ERR, "out of memory");
        status = OPENVPN_PLUGIN_FUNC_ERROR;
    } else if (r.error[0]) {
        logf_(ctx, PLOG_ERR, "bad openvpn environment: %s", r.error);
        status = OPENVPN_PLUGIN_FUNC_ERROR;
    } else {
        /* +1: the up event's add_wfp_block, decided after the first acks */
        int32_t *errs = calloc(m.count + 1, sizeof *errs);
        const char *why = NULL;
        int why_errno = 0;
        uint32_t first = first_id();
        int rc = 0;
        if (!errs) {
            logf_(ctx, PLOG_ERR, "out of memory");
            status = OPENVPN_PLUGIN_FUNC_ERROR;
            rc = -1;
        } else if (m.count) {
            rc = exchange(ctx->fd, &m, 0, first, errs, &why, &why_errno);
        }
        if (!rc && event == OPENVPN_PLUGIN_UP) {
            /* The facts (block-outside-dns) are read only now: openvpn printed the
             * PUSH_REPLY before calling us, and the service reads all of openvpn's
             * pending output before it decides a batch, so once the first messages are
             * acked the facts include the push.  (The script hook got the same ordering
             * from its own start-up time, ~30 ms; the plugin is too quick for that.) */
            size_t before = m.count;
            iface_t ifc;
            if (!get_iface(&r, &e, &ifc))
                block(&r, &e, &m, &ifc);
            if (m.oom) {
                logf_(ctx, PLOG_ERR, "out of memory");
                status = OPENVPN_PLUGIN_FUNC_ERROR;
            } else if (m.count > before) {
                rc = exchange(ctx->fd, &m, before, first, errs, &why, &why_errno);
            }
        }
        if (rc && why) {
            if (why_errno)
                logf_(ctx, PLOG_ERR, "%s on fd %d: %s", why, ctx->fd, strerror(why_errno));
            else
                logf_(ctx, PLOG_ERR, "%s", why);
            status = OPENVPN_PLUGIN_FUNC_ERROR;
        } else if (!rc) {
            for (size_t i = 0; i < m.count; i++) {
                if (!errs[i]) continue;
                refused++;
                logf_(ctx, PLOG_ERR, "%s refused by the service: error 0x%08x",
                      type_name(get32(m.buf + m.off[i])), (uint32_t)errs[i]);
            }
            if (refused) status = OPENVPN_PLUGIN_FUNC_ERROR;
        }
        free(errs);
    }
    free(e.slots);
    double t1 = now_mono();
    /* One line per event at verb 1: users see what was asked, the benchmark reads the
     * time from openvpn's call to the last ack. */
    logf_(ctx, PLOG_NOTE, "%s: %zu messages, %zu refused, %.1f ms (monotonic %.9f -> %.9f)%s",
          event_name(event), m.count, refused, (t1 - t0) * 1000, t0, t1,
          status == OPENVPN_PLUGIN_FUNC_SUCCESS ? "" : ", failed");
    free(m.buf);
    free(m.off);
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
