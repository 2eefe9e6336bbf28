/*
 * sink.c - the upstream collector of the relay load test (loadtest/forwarding.py).
 *
 * The driver compiles it at run time:  gcc -O2 -Wall -o sink sink.c
 *
 * Listens on 127.0.0.1:--port (0: a free port, printed), accepts any number of TCP connections
 * and reads RFC 6587 frames from them (octet-counted `LEN SP MSG`, or LF-terminated with
 * --framing lf), in one thread with epoll. It writes nothing back and stores nothing but
 * counters and, with --sample FILE, a sample of the frames (every --sample-every-th frame and
 * the first --sample-first of every stream), one per line, for the driver's exact-format check.
 *
 * Every frame is checked in C: it must carry PLURA's relay stamp `[origip=A]` and the loadgen
 * tokens `seq=N src=I ip=A run=TAG`, with the stamp before them and its address equal to the
 * message's own ip= (the sender's address). Per stream (run tag, src id) it counts received
 * (distinct seqs), duplicated and reordered frames, like the ceelog verifier (verify.py).
 *
 * Control over stdin/stdout, one line each:
 *   count  -> {"frames":N,"bytes":B,"first_ns":T,"last_ns":T,"conns":C,...}  (cheap, polled)
 *   dump   -> the same plus "streams":[{"run":..,"src":..,"received":..,...}], sample flushed
 *   quit, or EOF on stdin (the driver went away) -> exit
 * Times are CLOCK_REALTIME ns of the read that completed the first and the last frame (as the
 * generator's first_send_ns). Safety: binds 127.0.0.1 only; exits after --max-time seconds,
 * on SIGINT/SIGTERM and when stdin closes.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 256
#define MAX_STREAMS 1024
#define BUF_BYTES (1 << 20)
#define MAX_FRAME (BUF_BYTES - 16)
#define RUN_MAX 48

struct conn {
    int fd;
    char *buf;
    size_t len;
};

struct stream {                /* one numbered sequence: a run tag and a source id */
    char run[RUN_MAX];
    int src;
    uint8_t *counts;           /* counts[seq] = frames seen with that seq, saturating at 255 */
    uint32_t cap;
    long received, duplicated, reordered;
    long highest;
};

static struct {
    long frames, bytes, conns, framing_errors, no_stamp, no_tokens, stamp_after_body,
        ip_mismatch, overflow_streams;
    uint64_t first_ns, last_ns;
} S;

static struct stream streams[MAX_STREAMS];
static int n_streams;
static struct conn conns[MAX_CONNS];
static int lf_framing;
static long sample_every = 1000, sample_first = 3;
static FILE *sample;
static volatile sig_atomic_t g_stop;
static void on_signal(int s) { (void)s; g_stop = 1; }

static uint64_t now_ns(clockid_t clk) {
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) { perror(what); exit(2); }

static struct stream *stream_of(const char *run, size_t run_len, int src) {
    static int last = -1;
    if (run_len >= RUN_MAX) run_len = RUN_MAX - 1;
    if (last >= 0 && streams[last].src == src && !strncmp(streams[last].run, run, run_len) &&
        streams[last].run[run_len] == 0)
        return &streams[last];
    for (int i = 0; i < n_streams; i++)
        if (streams[i].src == src && !strncmp(streams[i].run, run, run_len) &&
            streams[i].run[run_len] == 0)
            return &streams[last = i];
    if (n_streams == MAX_STREAMS) return NULL;
    struct stream *s = &streams[n_streams];
    memcpy(s->run, run, run_len);
    s->run[run_len] = 0;
    s->src = src;
    s->highest = -1;
    return &streams[last = n_streams++];
}

static void count_seq(struct stream *s, uint32_t seq) {
    if (seq >= s->cap) {
        uint32_t cap = s->cap ? s->cap : 1024;
        while (cap <= seq) cap *= 2;
        s->counts = realloc(s->counts, cap);
        if (!s->counts) die("realloc");
        memset(s->counts + s->cap, 0, cap - s->cap);
        s->cap = cap;
    }
    if (s->counts[seq]) s->duplicated++;
    else s->received++;
    if (s->counts[seq] < 255) s->counts[seq]++;
    if ((long)seq < s->highest) s->reordered++;
    else s->highest = seq;
}

/* the token after `key` (e.g. " ip=") up to the next space: its start and length, or NULL */
static const char *token(const char *p, const char *end, const char *key, size_t *len) {
    size_t k = strlen(key);
    if ((size_t)(end - p) < k || memcmp(p, key, k)) return NULL;
    p += k;
    const char *q = memchr(p, ' ', (size_t)(end - p));
    if (!q) return NULL;
    *len = (size_t)(q - p);
    return p;
}

static void check_frame(const char *f, size_t n) {
    const char *end = f + n;
    S.frames++;
    S.bytes += (long)n;
    const char *stamp = memmem(f, n, "[origip=", 8), *ip = NULL, *run = NULL;
    const char *seq_at = memmem(f, n, "seq=", 4);
    size_t stamp_len = 0, ip_len = 0, run_len = 0, src_len = 0;
    if (stamp) {
        stamp += 8;
        const char *close = memchr(stamp, ']', (size_t)(end - stamp));
        if (close) stamp_len = (size_t)(close - stamp);
        else stamp = NULL;
    }
    if (!stamp) S.no_stamp++;
    uint32_t seq = 0;
    int src = -1;
    const char *p = seq_at ? seq_at + 4 : NULL;
    if (p && end - p > 8) {
        for (int i = 0; i < 8; i++) seq = seq * 10 + (uint32_t)(p[i] - '0');
        const char *src_at = token(p + 8, end, " src=", &src_len);
        if (src_at) {
            src = atoi(src_at);
            ip = token(src_at + src_len, end, " ip=", &ip_len);
            if (ip) run = token(ip + ip_len, end, " run=", &run_len);
        }
    }
    if (!run) { S.no_tokens++; return; }
    if (stamp && stamp > seq_at) S.stamp_after_body++;
    if (stamp && (stamp_len != ip_len || memcmp(stamp, ip, ip_len))) S.ip_mismatch++;
    struct stream *s = stream_of(run, run_len, src);
    if (!s) { S.overflow_streams++; return; }
    if (sample && ((long)seq < sample_first || S.frames % sample_every == 0)) {
        fwrite(f, 1, n, sample);
        fputc('\n', sample);
    }
    count_seq(s, seq);
}

/* frames in c->buf: checks the complete ones, keeps the rest; -1 on a framing error */
static int parse_frames(struct conn *c) {
    size_t off = 0;
    while (off < c->len) {
        char *p = c->buf + off;
        size_t avail = c->len - off;
        if (lf_framing) {
            char *nl = memchr(p, '\n', avail);
            if (!nl) break;
            check_frame(p, (size_t)(nl - p));
            off += (size_t)(nl - p) + 1;
            continue;
        }
        size_t i = 0, len = 0;
        while (i < avail && i < 9 && p[i] >= '0' && p[i] <= '9') len = len * 10 + (size_t)(p[i++] - '0');
        if (i == avail) break; /* the length is not complete yet */
        if (i == 0 || p[i] != ' ' || len > MAX_FRAME) return -1;
        if (avail < i + 1 + len) break;
        check_frame(p + i + 1, len);
        off += i + 1 + len;
    }
    if (!lf_framing && c->len - off >= BUF_BYTES) return -1;
    if (lf_framing && off == 0 && c->len == BUF_BYTES) return -1; /* a line longer than the buffer */
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
    return 0;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void print_counts(int with_streams) {
    int open = 0;
    for (int i = 0; i < MAX_CONNS; i++) open += conns[i].fd > 0;
    printf("{\"frames\":%ld,\"bytes\":%ld,\"first_ns\":%llu,\"last_ns\":%llu,\"conns\":%ld,"
           "\"open_conns\":%d,\"framing_errors\":%ld,\"no_stamp\":%ld,\"no_tokens\":%ld,"
           "\"stamp_after_body\":%ld,\"ip_mismatch\":%ld,\"overflow_streams\":%ld,\"cpu_s\":%.3f",
           S.frames, S.bytes, (unsigned long long)S.first_ns, (unsigned long long)S.last_ns,
           S.conns, open, S.framing_errors, S.no_stamp, S.no_tokens, S.stamp_after_body,
           S.ip_mismatch, S.overflow_streams, cpu_seconds());
    if (with_streams) {
        printf(",\"streams\":[");
        for (int i = 0; i < n_streams; i++) {
            struct stream *s = &streams[i];
            for (char *q = s->run; *q; q++)
                if (*q == '"' || *q == '\\' || (unsigned char)*q < 32) *q = '?';
            printf("%s{\"run\":\"%s\",\"src\":%d,\"received\":%ld,\"duplicated\":%ld,"
                   "\"reordered\":%ld,\"highest\":%ld}",
                   i ? "," : "", s->run, s->src, s->received, s->duplicated, s->reordered,
                   s->highest);
        }
        printf("]");
        if (sample) fflush(sample);
    }
    printf("}\n");
    fflush(stdout);
}

/* one command line from stdin; returns 1 to quit */
static int on_command(void) {
    static char line[256];
    static size_t len;
    ssize_t r = read(0, line + len, sizeof line - 1 - len);
    if (r <= 0) return 1;
    len += (size_t)r;
    char *nl;
    while ((nl = memchr(line, '\n', len))) {
        *nl = 0;
        if (!strcmp(line, "count")) print_counts(0);
        else if (!strcmp(line, "dump")) print_counts(1);
        else if (!strcmp(line, "quit")) return 1;
        size_t used = (size_t)(nl - line) + 1;
        memmove(line, nl + 1, len - used);
        len -= used;
    }
    if (len == sizeof line - 1) len = 0; /* garbage without a newline */
    return 0;
}

static void close_conn(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->len = 0;
}

static void accept_all(int ep, int lfd) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0) return;
        int slot = -1;
        for (int i = 0; i < MAX_CONNS && slot < 0; i++)
            if (conns[i].fd <= 0) slot = i;
        if (slot < 0) { close(fd); continue; }
        struct conn *c = &conns[slot];
        if (!c->buf && !(c->buf = malloc(BUF_BYTES))) die("malloc");
        c->fd = fd;
        c->len = 0;
        S.conns++;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)slot + 2};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    }
}

static void read_conn(int ep, struct conn *c) {
    ssize_t r = read(c->fd, c->buf + c->len, BUF_BYTES - c->len);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (r <= 0) { close_conn(ep, c); return; }
    c->len += (size_t)r;
    long before = S.frames;
    if (parse_frames(c) < 0) {
        S.framing_errors++;
        close_conn(ep, c);
    }
    if (S.frames != before) {
        S.last_ns = now_ns(CLOCK_REALTIME);
        if (!S.first_ns) S.first_ns = S.last_ns;
    }
}

int main(int argc, char **argv) {
    static struct option opts[] = {{"port", 1, 0, 'p'}, {"framing", 1, 0, 'F'},
                                   {"sample", 1, 0, 's'}, {"sample-every", 1, 0, 'e'},
                                   {"sample-first", 1, 0, 'f'}, {"max-time", 1, 0, 'T'},
                                   {0, 0, 0, 0}};
    int o, port = 0;
    double max_time = 600;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'p': port = atoi(optarg); break;
        case 'F': lf_framing = !strcmp(optarg, "lf"); break;
        case 's': if (!(sample = fopen(optarg, "w"))) die(optarg); break;
        case 'e': sample_every = atol(optarg) > 0 ? atol(optarg) : 1; break;
        case 'f': sample_first = atol(optarg); break;
        case 'T': max_time = atof(optarg); break;
        default:
            fprintf(stderr, "usage: sink [--port N] [--framing octet|lf] [--sample FILE] "
                            "[--sample-every N] [--sample-first N] [--max-time S]\n");
            return 2;
        }
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    if (lfd < 0) die("socket");
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa_in = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa_in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa_in;
    if (bind(lfd, (struct sockaddr *)&sa_in, sizeof sa_in) < 0) die("bind 127.0.0.1");
    if (listen(lfd, 64) < 0) die("listen");
    getsockname(lfd, (struct sockaddr *)&sa_in, &sl);
    printf("{\"port\":%d}\n", ntohs(sa_in.sin_port));
    fflush(stdout);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 0}, evs[64];
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    ev.data.u32 = 1;
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    uint64_t deadline = now_ns(CLOCK_MONOTONIC) + (uint64_t)(max_time * 1e9);
    while (!g_stop && now_ns(CLOCK_MONOTONIC) < deadline) {
        int n = epoll_wait(ep, evs, 64, 500);
        for (int i = 0; i < n; i++) {
            uint32_t id = evs[i].data.u32;
            if (id == 0 && on_command()) g_stop = 1;
            else if (id == 1) accept_all(ep, lfd);
            else if (id >= 2 && conns[id - 2].fd > 0) read_conn(ep, &conns[id - 2]);
        }
    }
    if (sample) fclose(sample);
    return 0;
}
