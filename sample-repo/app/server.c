/*
 * sample-app: a tiny HTTP/1.1 server used as the release payload in tests.
 *
 * Build: gcc -O2 -static -pthread -o app server.c
 *
 * Usage:  app          serve on $PORT (default 8080)
 *         app check    GET 127.0.0.1:$PORT/healthz, exit 0 on 200 else 1
 *                      (lets an exec-form Docker health check work without a shell)
 *
 * Environment (read once at start):
 *   PORT         listen port (default 8080)
 *   REVISION     echoed in every body (baked into the image by the build)
 *   GREETING     echoed in every body
 *   FAIL_HEALTH  "1": /healthz answers 503 (so does an existing /tmp/fail-health,
 *                checked on every probe so a test can flip it at run time)
 *   ERROR_RATE   percent (0-100, fractional allowed) of non-health requests that get 500
 *   DELAY_MS     extra latency (milliseconds, fractional allowed) for non-health requests
 *   DELAY_PATHS  more latency for some paths: "PREFIX=MS,PREFIX=MS" (at most 16), e.g.
 *                "/api/orders=20,/slow=5": a path starting with PREFIX waits MS more
 *                (the longest matching prefix counts), on top of DELAY_MS
 *
 * Every path other than /healthz and /events answers like "/" and its body names the
 * path, so routing tests can tell backends and path prefixes apart.
 *
 * /events is a server-sent event stream (text/event-stream, chunked): an event
 * "id: N / data: revision=.. host=.. n=N" every 200 ms until the client leaves or the
 * app gets SIGTERM; then a last "event: bye" and the terminating chunk, so a client
 * can tell an end by the server (clean) from a cut connection.
 *
 * Design: one detached thread per connection with HTTP/1.1 keep-alive and
 * pipelining. The accept loop polls the listening socket together with a signalfd;
 * SIGTERM/SIGINT stop accepting, wait briefly for requests in progress and exit 0,
 * so `docker stop` returns at once (as PID 1 in a container, an unhandled SIGTERM
 * would be ignored and docker would wait for its 10 s kill timeout).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define REQ_BUF_SIZE 16384      /* max size of one request head */
#define RESP_BUF_SIZE 8192
#define MAX_FIELD 512           /* env values and path are truncated to this in bodies */
#define MAX_CONNECTIONS 8192    /* beyond this, new connections are closed at once */
#define IDLE_TIMEOUT_S 30       /* keep-alive idle / slow client timeout */
#define SHUTDOWN_GRACE_MS 700   /* how long SIGTERM waits for requests in progress */
#define THREAD_STACK (256 * 1024)
#define EVENT_EVERY_MS 200      /* /events: one event per interval */
#define STREAMS_GRACE_MS 3000   /* how long SIGTERM waits for /events streams to end */

static char g_revision[MAX_FIELD];
static char g_greeting[MAX_FIELD];
static char g_hostname[256];
static int g_fail_health_env;
static double g_error_rate;     /* 0..100 */
static double g_delay_ms;
#define MAX_DELAY_PATHS 16
static struct {
    char prefix[128];
    size_t len;
    double ms;
} g_delay_paths[MAX_DELAY_PATHS];
static int g_n_delay_paths;
static int g_port = 8080;

static atomic_int g_connections;
static atomic_int g_busy;       /* requests being processed right now */
static atomic_int g_stopping;
static atomic_int g_streams;    /* /events streams open right now */
static atomic_uint_fast64_t g_seed_counter;

/* ---- small helpers ---------------------------------------------------- */

static void copy_env(char *dst, size_t n, const char *name, const char *dflt) {
    const char *v = getenv(name);
    if (v == NULL) v = dflt;
    /* keep bodies on one line: replace control characters */
    size_t i = 0;
    for (; v[i] != '\0' && i + 1 < n; i++) {
        unsigned char c = (unsigned char)v[i];
        dst[i] = (c < 0x20 || c == 0x7f) ? '_' : (char)c;
    }
    dst[i] = '\0';
}

static int parse_port(const char *s) {
    if (s == NULL || *s == '\0') return 8080;
    char *end = NULL;
    long p = strtol(s, &end, 10);
    if (*end != '\0' || p <= 0 || p > 65535) {
        fprintf(stderr, "sample-app: invalid PORT=%s\n", s);
        exit(2);
    }
    return (int)p;
}

static double parse_nonneg(const char *name, double max) {
    const char *s = getenv(name);
    if (s == NULL || *s == '\0') return 0.0;
    char *end = NULL;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || !(v >= 0.0) || v > max) {
        fprintf(stderr, "sample-app: ignoring invalid %s=%s\n", name, s);
        return 0.0;
    }
    return v;
}

/* DELAY_PATHS="PREFIX=MS,...": entries that do not parse are skipped with a warning. */
static void parse_delay_paths(void) {
    const char *s = getenv("DELAY_PATHS");
    if (s == NULL) return;
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", s);
    char *save = NULL;
    for (char *item = strtok_r(buf, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save)) {
        char *eq = strrchr(item, '=');
        char *end = NULL;
        double ms = eq ? strtod(eq + 1, &end) : -1.0;
        size_t len = eq ? (size_t)(eq - item) : 0;
        if (eq == NULL || end == eq + 1 || *end != '\0' || !(ms >= 0.0) || ms > 3600.0 * 1000.0 ||
            len == 0 || item[0] != '/' || len >= sizeof g_delay_paths[0].prefix ||
            g_n_delay_paths >= MAX_DELAY_PATHS) {
            fprintf(stderr, "sample-app: ignoring DELAY_PATHS entry %s\n", item);
            continue;
        }
        memcpy(g_delay_paths[g_n_delay_paths].prefix, item, len);
        g_delay_paths[g_n_delay_paths].prefix[len] = '\0';
        g_delay_paths[g_n_delay_paths].len = len;
        g_delay_paths[g_n_delay_paths].ms = ms;
        g_n_delay_paths++;
    }
}

/* The extra delay of a path: DELAY_MS plus its longest DELAY_PATHS prefix's. */
static double path_delay_ms(const char *path) {
    double extra = 0.0;
    size_t best = 0;
    for (int i = 0; i < g_n_delay_paths; i++) {
        if (g_delay_paths[i].len > best &&
            strncmp(path, g_delay_paths[i].prefix, g_delay_paths[i].len) == 0) {
            best = g_delay_paths[i].len;
            extra = g_delay_paths[i].ms;
        }
    }
    return g_delay_ms + extra;
}

/* Per-thread splitmix64: no shared state, so no locking on the hot path. */
static __thread uint64_t t_rng;
static __thread int t_rng_ready;

static uint64_t rng_next(void) {
    if (!t_rng_ready) {
        uint64_t seed = 0;
        if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32);
        }
        t_rng = seed ^ (atomic_fetch_add(&g_seed_counter, 1) * 0x9E3779B97F4A7C15ULL);
        t_rng_ready = 1;
    }
    uint64_t z = (t_rng += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* uniform in [0, 100) */
static double rng_percent(void) {
    return (double)(rng_next() >> 11) * (1.0 / 9007199254740992.0) * 100.0;
}

static void sleep_ms(double ms) {
    if (ms <= 0) return;
    struct timespec ts;
    ts.tv_sec = (time_t)(ms / 1000.0);
    ts.tv_nsec = (long)((ms - (double)ts.tv_sec * 1000.0) * 1e6);
    if (ts.tv_nsec >= 1000000000L) ts.tv_nsec = 999999999L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int send_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Case-insensitive search of header `name` within [start, end); returns value start. */
static const char *find_header(const char *start, const char *end, const char *name,
                               size_t *vlen) {
    size_t nlen = strlen(name);
    const char *line = start;
    while (line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (eol == NULL) eol = end;
        if ((size_t)(eol - line) > nlen && line[nlen] == ':' &&
            strncasecmp(line, name, nlen) == 0) {
            const char *v = line + nlen + 1;
            while (v < eol && (*v == ' ' || *v == '\t')) v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        line = eol + 1;
    }
    return NULL;
}

static int token_in(const char *v, size_t vlen, const char *token) {
    size_t tlen = strlen(token);
    for (size_t i = 0; i + tlen <= vlen; i++) {
        if (strncasecmp(v + i, token, tlen) == 0) return 1;
    }
    return 0;
}

/* ---- request handling ------------------------------------------------- */

static int health_failing(void) {
    return g_fail_health_env || access("/tmp/fail-health", F_OK) == 0;
}

/* Writes a full response; returns 0 on success, -1 if the connection is broken. */
static int respond(int fd, int status, const char *reason, const char *body, int head_only,
                   int keep_alive) {
    char hdr[512];
    size_t blen = strlen(body);
    int n = snprintf(hdr, sizeof hdr,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: text/plain; charset=utf-8\r\n"
                     "Content-Length: %zu\r\n"
                     "X-Revision: %.64s\r\n"
                     "Connection: %s\r\n"
                     "\r\n",
                     status, reason, blen, g_revision, keep_alive ? "keep-alive" : "close");
    if (n < 0 || (size_t)n >= sizeof hdr) return -1;
    char out[RESP_BUF_SIZE];
    if (!head_only && (size_t)n + blen <= sizeof out) {
        memcpy(out, hdr, (size_t)n);
        memcpy(out + n, body, blen);
        return send_all(fd, out, (size_t)n + blen);
    }
    if (send_all(fd, hdr, (size_t)n) != 0) return -1;
    return head_only ? 0 : send_all(fd, body, blen);
}

/* Sends one chunk of chunked transfer encoding; 0 on success, -1 when broken. */
static int send_chunk(int fd, const char *data, size_t len) {
    char head[32];
    int n = snprintf(head, sizeof head, "%zx\r\n", len);
    if (send_all(fd, head, (size_t)n) != 0 || send_all(fd, data, len) != 0) return -1;
    return send_all(fd, "\r\n", 2);
}

/* True when the client closed its side (or reset): nothing more to send to. */
static int client_left(int fd) {
    char b[256];
    ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT | MSG_PEEK);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/*
 * /events: an SSE stream until the client leaves or SIGTERM; then "event: bye" and
 * the last chunk (a clean end). Always closes the connection afterwards (returns 0).
 */
static int stream_events(int fd, int head_only) {
    char hdr[256];
    int n = snprintf(hdr, sizeof hdr,
                     "HTTP/1.1 200 OK\r\n"
                     "Content-Type: text/event-stream\r\n"
                     "Cache-Control: no-cache\r\n"
                     "X-Revision: %.64s\r\n"
                     "Transfer-Encoding: chunked\r\n"
                     "Connection: close\r\n"
                     "\r\n",
                     g_revision);
    if (send_all(fd, hdr, (size_t)n) != 0 || head_only) return 0;
    atomic_fetch_add(&g_streams, 1);
    char ev[MAX_FIELD + 256];
    for (unsigned long i = 1;; i++) {
        if (atomic_load(&g_stopping)) {
            int m = snprintf(ev, sizeof ev, "event: bye\ndata: revision=%s stopping\n\n",
                             g_revision);
            if (send_chunk(fd, ev, (size_t)m) == 0) send_all(fd, "0\r\n\r\n", 5);
            break;
        }
        int m = snprintf(ev, sizeof ev, "id: %lu\ndata: revision=%s host=%s n=%lu\n\n", i,
                         g_revision, g_hostname, i);
        if (send_chunk(fd, ev, (size_t)m) != 0) break;
        /* wait one interval, waking early on SIGTERM or when the client leaves */
        for (int waited = 0; waited < EVENT_EVERY_MS && !atomic_load(&g_stopping);
             waited += 20) {
            sleep_ms(20);
        }
        if (client_left(fd)) break;
    }
    atomic_fetch_sub(&g_streams, 1);
    return 0;
}

/*
 * Handles one complete request head in req[0..head_len). Returns 1 to keep the
 * connection open, 0 to close it.
 */
static int handle_request(int fd, const char *req, size_t head_len, int *discard_body,
                          size_t *body_len) {
    const char *end = req + head_len;
    const char *eol = memchr(req, '\n', head_len);
    if (eol == NULL) eol = end;

    /* request line: METHOD SP TARGET SP VERSION */
    const char *sp1 = memchr(req, ' ', (size_t)(eol - req));
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (sp1 == NULL || sp2 == NULL || sp2 == sp1 + 1) {
        respond(fd, 400, "Bad Request", "bad request\n", 0, 0);
        return 0;
    }
    int head_only = (sp1 - req == 4 && memcmp(req, "HEAD", 4) == 0);
    int http10 = (eol - sp2 >= 9 && memcmp(sp2 + 1, "HTTP/1.0", 8) == 0);

    char path[MAX_FIELD];
    size_t plen = 0;
    for (const char *p = sp1 + 1; p < sp2 && *p != '?' && *p != '#' && plen + 1 < sizeof path;
         p++) {
        unsigned char c = (unsigned char)*p;
        path[plen++] = (c < 0x20 || c == 0x7f) ? '_' : (char)c;
    }
    path[plen] = '\0';

    const char *hdrs = eol + 1;
    size_t vlen = 0;
    const char *conn = find_header(hdrs, end, "Connection", &vlen);
    int keep_alive = http10 ? (conn != NULL && token_in(conn, vlen, "keep-alive"))
                            : !(conn != NULL && token_in(conn, vlen, "close"));

    /* Request bodies are read and thrown away; chunked ones are not supported. */
    *discard_body = 0;
    *body_len = 0;
    const char *te = find_header(hdrs, end, "Transfer-Encoding", &vlen);
    if (te != NULL && !(vlen == 8 && strncasecmp(te, "identity", 8) == 0)) {
        keep_alive = 0;
    } else {
        const char *cl = find_header(hdrs, end, "Content-Length", &vlen);
        if (cl != NULL) {
            char tmp[32];
            if (vlen == 0 || vlen >= sizeof tmp) {
                respond(fd, 400, "Bad Request", "bad content-length\n", 0, 0);
                return 0;
            }
            memcpy(tmp, cl, vlen);
            tmp[vlen] = '\0';
            char *e = NULL;
            unsigned long long v = strtoull(tmp, &e, 10);
            if (*e != '\0' || tmp[0] == '-') {
                respond(fd, 400, "Bad Request", "bad content-length\n", 0, 0);
                return 0;
            }
            *discard_body = 1;
            *body_len = (size_t)v;
        }
    }
    if (atomic_load(&g_stopping)) keep_alive = 0;

    char body[4 * MAX_FIELD + 128];
    if (strcmp(path, "/healthz") == 0) {
        if (health_failing()) {
            return respond(fd, 503, "Service Unavailable", "unhealthy\n", head_only,
                           keep_alive) == 0 && keep_alive;
        }
        return respond(fd, 200, "OK", "ok\n", head_only, keep_alive) == 0 && keep_alive;
    }

    if (strcmp(path, "/events") == 0) return stream_events(fd, head_only);

    sleep_ms(path_delay_ms(path));
    if (g_error_rate > 0.0 && rng_percent() < g_error_rate) {
        snprintf(body, sizeof body, "error revision=%s host=%s path=%s\n", g_revision,
                 g_hostname, path);
        return respond(fd, 500, "Internal Server Error", body, head_only, keep_alive) == 0 &&
               keep_alive;
    }
    snprintf(body, sizeof body, "revision=%s greeting=%s host=%s path=%s\n", g_revision,
             g_greeting, g_hostname, path);
    return respond(fd, 200, "OK", body, head_only, keep_alive) == 0 && keep_alive;
}

static void serve_connection(int fd) {
    char buf[REQ_BUF_SIZE];
    size_t have = 0;
    size_t to_discard = 0;   /* request body bytes still to skip */

    for (;;) {
        /* skip a request body that is (partly) still in the buffer */
        if (to_discard > 0 && have > 0) {
            size_t d = to_discard < have ? to_discard : have;
            memmove(buf, buf + d, have - d);
            have -= d;
            to_discard -= d;
        }
        /* look for a complete head already buffered (pipelining) */
        char *hend = NULL;
        if (to_discard == 0 && have > 0) {
            /* tolerate stray CRLF between requests (RFC 9112 2.2) */
            size_t skip = 0;
            while (skip < have && (buf[skip] == '\r' || buf[skip] == '\n')) skip++;
            if (skip > 0) {
                memmove(buf, buf + skip, have - skip);
                have -= skip;
            }
            hend = memmem(buf, have, "\r\n\r\n", 4);
        }
        if (hend != NULL) {
            size_t head_len = (size_t)(hend - buf) + 4;
            int discard = 0;
            size_t blen = 0;
            atomic_fetch_add(&g_busy, 1);
            int keep = handle_request(fd, buf, head_len, &discard, &blen);
            atomic_fetch_sub(&g_busy, 1);
            if (!keep) return;
            memmove(buf, buf + head_len, have - head_len);
            have -= head_len;
            to_discard = discard ? blen : 0;
            continue;
        }
        if (have == sizeof buf) {
            respond(fd, 431, "Request Header Fields Too Large", "request head too large\n", 0,
                    0);
            return;
        }
        if (atomic_load(&g_stopping) && have == 0) return;
        ssize_t n = recv(fd, buf + have, sizeof buf - have, 0);
        if (n == 0) return;
        if (n < 0) {
            if (errno == EINTR) continue;
            return; /* timeout (EAGAIN) or reset */
        }
        if (to_discard > 0) {
            size_t d = to_discard < (size_t)n ? to_discard : (size_t)n;
            memmove(buf + have, buf + have + d, (size_t)n - d);
            n -= (ssize_t)d;
            to_discard -= d;
        }
        have += (size_t)n;
    }
}

static void *conn_thread(void *arg) {
    int fd = (int)(intptr_t)arg;
    serve_connection(fd);
    close(fd);
    atomic_fetch_sub(&g_connections, 1);
    return NULL;
}

/* ---- listening and shutdown -------------------------------------------- */

static int open_listener(int port) {
    int one = 1;
    /* Dual-stack first; fall back to IPv4 where IPv6 is disabled (e.g. some netns). */
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        int zero = 0;
        struct sockaddr_in6 a6;
        memset(&a6, 0, sizeof a6);
        a6.sin6_family = AF_INET6;
        a6.sin6_addr = in6addr_any;
        a6.sin6_port = htons((uint16_t)port);
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        if (bind(fd, (struct sockaddr *)&a6, sizeof a6) == 0 && listen(fd, 4096) == 0)
            return fd;
        close(fd);
    }
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("sample-app: socket");
        exit(1);
    }
    struct sockaddr_in a4;
    memset(&a4, 0, sizeof a4);
    a4.sin_family = AF_INET;
    a4.sin_addr.s_addr = htonl(INADDR_ANY);
    a4.sin_port = htons((uint16_t)port);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a4, sizeof a4) != 0) {
        fprintf(stderr, "sample-app: bind port %d: %s\n", port, strerror(errno));
        exit(1);
    }
    if (listen(fd, 4096) != 0) {
        perror("sample-app: listen");
        exit(1);
    }
    return fd;
}

static void shutdown_and_exit(int lfd, int signo) {
    atomic_store(&g_stopping, 1);
    close(lfd);
    /* Let requests already being processed finish (bounded), then leave. Idle
     * keep-alive connections are simply dropped by the exit. /events streams see
     * g_stopping within 20 ms and end with "event: bye": wait for them (bounded) too. */
    for (int waited = 0; waited < SHUTDOWN_GRACE_MS && atomic_load(&g_busy) > 0; waited += 10) {
        sleep_ms(10);
    }
    for (int waited = 0; waited < STREAMS_GRACE_MS && atomic_load(&g_streams) > 0;
         waited += 10) {
        sleep_ms(10);
    }
    printf("sample-app: signal %d, stopping (revision=%s)\n", signo, g_revision);
    fflush(stdout);
    _exit(0);
}

static int run_check(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 1;
    struct timeval tv = {.tv_sec = 3, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)g_port);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        fprintf(stderr, "check: connect 127.0.0.1:%d: %s\n", g_port, strerror(errno));
        return 1;
    }
    const char req[] = "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if (send_all(fd, req, sizeof req - 1) != 0) return 1;
    char buf[64];
    size_t have = 0;
    while (have < 12) {
        ssize_t n = recv(fd, buf + have, sizeof buf - 1 - have, 0);
        if (n <= 0) break;
        have += (size_t)n;
    }
    buf[have] = '\0';
    close(fd);
    if (have >= 12 && memcmp(buf, "HTTP/1.", 7) == 0 && memcmp(buf + 8, " 200", 4) == 0) {
        return 0;
    }
    char *nl = strpbrk(buf, "\r\n");
    if (nl) *nl = '\0';
    fprintf(stderr, "check: unhealthy: %s\n", have ? buf : "(no response)");
    return 1;
}

int main(int argc, char **argv) {
    g_port = parse_port(getenv("PORT"));
    if (argc > 1 && strcmp(argv[1], "check") == 0) return run_check();
    if (argc > 1) {
        fprintf(stderr, "usage: %s [check]\n", argv[0]);
        return 2;
    }

    copy_env(g_revision, sizeof g_revision, "REVISION", "unknown");
    copy_env(g_greeting, sizeof g_greeting, "GREETING", "hello");
    if (gethostname(g_hostname, sizeof g_hostname - 1) != 0) strcpy(g_hostname, "unknown");
    const char *fh = getenv("FAIL_HEALTH");
    g_fail_health_env = fh != NULL && strcmp(fh, "1") == 0;
    g_error_rate = parse_nonneg("ERROR_RATE", 100.0);
    g_delay_ms = parse_nonneg("DELAY_MS", 3600.0 * 1000.0);
    parse_delay_paths();

    /* Signals are consumed through a signalfd in the accept loop; every thread
     * inherits the blocked mask, so none is interrupted by them. */
    signal(SIGPIPE, SIG_IGN);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGQUIT);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    if (sfd < 0) {
        perror("sample-app: signalfd");
        return 1;
    }

    int lfd = open_listener(g_port);
    printf("sample-app: listening on :%d revision=%s greeting=%s host=%s error_rate=%g "
           "delay_ms=%g fail_health=%d\n",
           g_port, g_revision, g_greeting, g_hostname, g_error_rate, g_delay_ms,
           g_fail_health_env);
    fflush(stdout);

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, THREAD_STACK);

    struct pollfd pfd[2] = {{.fd = lfd, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
    for (;;) {
        int pr = poll(pfd, 2, -1);
        if (pr < 0) {
            if (errno == EINTR) continue;
            perror("sample-app: poll");
            sleep_ms(10);
            continue;
        }
        if (pfd[1].revents & POLLIN) {
            struct signalfd_siginfo si;
            int signo = SIGTERM;
            if (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) signo = (int)si.ssi_signo;
            shutdown_and_exit(lfd, signo);
        }
        if (!(pfd[0].revents & POLLIN)) continue;

        int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (cfd < 0) {
            /* EMFILE/ENFILE/ENOBUFS: back off briefly instead of spinning */
            if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) sleep_ms(5);
            continue;
        }
        if (atomic_fetch_add(&g_connections, 1) >= MAX_CONNECTIONS) {
            atomic_fetch_sub(&g_connections, 1);
            close(cfd);
            continue;
        }
        int one = 1;
        setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct timeval tv = {.tv_sec = IDLE_TIMEOUT_S, .tv_usec = 0};
        setsockopt(cfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(cfd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

        pthread_t th;
        if (pthread_create(&th, &attr, conn_thread, (void *)(intptr_t)cfd) != 0) {
            /* out of threads/memory: refuse this connection, keep serving others */
            close(cfd);
            atomic_fetch_sub(&g_connections, 1);
            sleep_ms(1);
        }
    }
}
