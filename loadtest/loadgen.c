/*
 * loadgen.c - syslog load generator of plura-relay's load test (loadtest/).
 *
 * The driver compiles it at run time:  gcc -O2 -Wall -pthread -o loadgen loadgen.c
 *
 *   UDP: paced at --rate msgs/s for --duration s (or --rate 0: --count messages as fast as
 *        possible), round robin over --sources sockets bound to consecutive loopback
 *        addresses from --src-base. One system call sends a batch of one source's messages:
 *        UDP GSO (UDP_SEGMENT: one send of up to 64 equal-size datagrams, split by the kernel;
 *        the receiver still gets one datagram per message) or sendmmsg when GSO is off or
 *        refused.
 *   TCP: --count messages as fast as possible over --conns connections (one thread each;
 *        connection k is bound to source k % sources), LF or RFC 6587 octet-counted framing.
 *
 * Message (RFC 3164 or 5424 header, then the MSG part), padded to exactly --size bytes:
 *   <PRI>TIMESTAMP HOSTNAME APP[PID]: seq=00000042 src=3 ip=127.0.0.5 run=TAG PAD...$
 * seq counts from 0 per stream (UDP: per source; TCP: per connection = src id); the verifier
 * recognises PAD (given with --pad) and the final '$', so truncation and corruption show.
 *
 * Safety: destination and sources must be in 127.0.0.0/8; every loop is bounded by a count
 * and a wall-clock limit (--max-time); SIGINT/SIGTERM stop it early with a summary.
 * Output: one JSON object on stdout (what was sent per stream, timings in CLOCK_REALTIME ns).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define MAX_STREAMS 4096
#define MAX_MSG 8192
#define GSO_MAX_SEGS 64
#define GSO_MAX_BYTES 65000
#define SEQ_DIGITS 8

struct cfg {
    int tcp, octet, fmt, size, sources, conns, batch, pri, gso; /* gso: -1 auto, 0 off, 1 on */
    uint32_t src_base; /* host byte order */
    char host[64], run[48], hostname[64], app[48], pad[512];
    int port;
    double rate, duration, max_time, tick_us;
    long count;
};

static struct cfg C = {
    .tcp = 0, .octet = 0, .fmt = 3164, .size = 200, .sources = 16, .conns = 4, .batch = 64,
    .pri = 30, .gso = -1, .src_base = (127u << 24) | 2u, .host = "127.0.0.1", .run = "r0",
    .hostname = "web-7f9c", .app = "nginx", .pad = "\"GET /index.html HTTP/1.1\" 200 5123 ",
    .port = 5514, .rate = 10000, .duration = 5, .max_time = 0, .tick_us = 100, .count = 0,
};

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int s) { (void)s; g_stop = 1; }

static uint64_t now_ns(clockid_t clk) {
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) { perror(what); exit(2); }

/* ------------------------------------------------------------------ messages */

struct stream {                /* one numbered sequence of messages: a source or a connection */
    int id;
    char ip[20];
    char buf[MAX_MSG + 16];    /* framed message: [octet count] message [LF] */
    int len, ts_off, ts_len, seq_off;
    uint32_t seq;              /* next sequence number */
    long sent, errors;
    int fd, err;
    uint64_t first_ns, last_ns;
};

static const char *MONTHS[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                               "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* timestamp of the configured format; its length is fixed per format */
static int format_ts(char *out, uint64_t real_ns) {
    time_t sec = (time_t)(real_ns / 1000000000ull);
    struct tm tm;
    localtime_r(&sec, &tm);
    if (C.fmt == 3164)
        return sprintf(out, "%s %2d %02d:%02d:%02d", MONTHS[tm.tm_mon], tm.tm_mday,
                       tm.tm_hour, tm.tm_min, tm.tm_sec);
    long off = tm.tm_gmtoff;
    char sign = off < 0 ? '-' : '+';
    if (off < 0) off = -off;
    return sprintf(out, "%04d-%02d-%02dT%02d:%02d:%02d.%06u%c%02ld:%02ld", tm.tm_year + 1900,
                   tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                   (unsigned)(real_ns % 1000000000ull / 1000ull), sign, off / 3600,
                   off % 3600 / 60);
}

static void ip_string(uint32_t addr, char *out) {
    sprintf(out, "%u.%u.%u.%u", addr >> 24, (addr >> 16) & 255, (addr >> 8) & 255, addr & 255);
}

/* fills s->buf with the framed message of seq 0; returns -1 if --size is too small */
static int build_message(struct stream *s) {
    char msg[MAX_MSG + 1], ts[64];
    int n, ts_off, seq_off, ts_len = format_ts(ts, now_ns(CLOCK_REALTIME));
    n = C.fmt == 3164 ? sprintf(msg, "<%d>", C.pri) : sprintf(msg, "<%d>1 ", C.pri);
    ts_off = n;
    if (C.fmt == 3164)
        n += sprintf(msg + n, "%s %s %s[%d]: ", ts, C.hostname, C.app, 100 + s->id);
    else
        n += sprintf(msg + n, "%s %s %s %d - - ", ts, C.hostname, C.app, 100 + s->id);
    seq_off = n + 4;
    n += sprintf(msg + n, "seq=%0*d src=%d ip=%s run=%s ", SEQ_DIGITS, 0, s->id, s->ip, C.run);
    if (n + 1 > C.size) return -1;
    int pad_len = (int)strlen(C.pad);
    for (int k = 0; n < C.size - 1; k = (k + 1) % pad_len) msg[n++] = C.pad[k];
    msg[n++] = '$';
    int pre = C.tcp && C.octet ? sprintf(s->buf, "%d ", n) : 0;
    memcpy(s->buf + pre, msg, (size_t)n);
    s->len = pre + n;
    if (C.tcp && !C.octet) s->buf[s->len++] = '\n';
    s->ts_off = pre + ts_off;
    s->ts_len = ts_len;
    s->seq_off = pre + seq_off;
    return 0;
}

static void put_seq(char *p, uint32_t v) {
    for (int i = SEQ_DIGITS - 1; i >= 0; i--, v /= 10) p[i] = (char)('0' + v % 10);
}

struct ts_cache { uint64_t sec; char s[64]; };

/* current timestamp text; 3164 has whole seconds, so it is formatted once a second */
static const char *timestamp_now(struct ts_cache *c) {
    uint64_t real = now_ns(CLOCK_REALTIME);
    if (C.fmt != 3164 || real / 1000000000ull != c->sec) {
        c->sec = real / 1000000000ull;
        format_ts(c->s, real);
    }
    return c->s;
}

static int source_socket(int type, int source_index, const struct sockaddr_in *dst) {
    int fd = socket(AF_INET, type, 0), one = 1, sndbuf = 4 << 20;
    if (fd < 0) die("socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (type == SOCK_DGRAM) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(C.src_base + (uint32_t)source_index);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind source address");
    if (connect(fd, (const struct sockaddr *)dst, sizeof *dst) < 0) die("connect");
    return fd;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void print_summary(struct stream *st, int n, long planned, double elapsed, int gso,
                          int batch) {
    long sent = 0, errors = 0;
    uint64_t first = UINT64_MAX, last = 0;
    for (int i = 0; i < n; i++) {
        sent += st[i].sent;
        errors += st[i].errors;
        if (st[i].first_ns && st[i].first_ns < first) first = st[i].first_ns;
        if (st[i].last_ns > last) last = st[i].last_ns;
    }
    if (first == UINT64_MAX) first = 0;
    printf("{\"proto\":\"%s\",\"framing\":\"%s\",\"format\":%d,\"run\":\"%s\","
           "\"rate\":%.0f,\"planned\":%ld,\"sent\":%ld,\"errors\":%ld,\"size\":%d,"
           "\"gso\":%s,\"batch\":%d,\"elapsed_s\":%.6f,\"achieved_rate\":%.1f,"
           "\"first_send_ns\":%llu,\"last_send_ns\":%llu,\"cpu_s\":%.3f,\"streams\":[",
           C.tcp ? "tcp" : "udp", C.tcp ? (C.octet ? "octet" : "lf") : "datagram", C.fmt,
           C.run, C.tcp ? 0.0 : C.rate, planned, sent, errors, C.size,
           gso ? "true" : "false", batch, elapsed, elapsed > 0 ? (sent + errors) / elapsed : 0,
           (unsigned long long)first, (unsigned long long)last, cpu_seconds());
    for (int i = 0; i < n; i++)
        printf("%s{\"src\":%d,\"ip\":\"%s\",\"seqs\":%u,\"sent\":%ld,\"errors\":%ld}",
               i ? "," : "", st[i].id, st[i].ip, st[i].seq, st[i].sent, st[i].errors);
    printf("]}\n");
}

/* ------------------------------------------------------------------ UDP */

/* sends n copies of s's message (consecutive seqs) in one system call (GSO) or a few
   (sendmmsg); returns 1 if GSO is unusable and the caller should switch it off */
static int send_udp_batch(struct stream *s, int n, int gso, char *bufs, struct mmsghdr *mm,
                          struct iovec *iov, const char *ts) {
    for (int k = 0; k < n; k++) {
        char *b = bufs + (size_t)k * (size_t)s->len;
        memcpy(b, s->buf, (size_t)s->len);
        memcpy(b + s->ts_off, ts, (size_t)s->ts_len);
        put_seq(b + s->seq_off, s->seq + (uint32_t)k);
        iov[k] = (struct iovec){.iov_base = b, .iov_len = (size_t)s->len};
        memset(&mm[k].msg_hdr, 0, sizeof mm[k].msg_hdr);
        mm[k].msg_hdr.msg_iov = &iov[k];
        mm[k].msg_hdr.msg_iovlen = 1;
    }
    s->seq += (uint32_t)n; /* numbers are used up even if sending fails: they count missing */
    if (!s->first_ns) s->first_ns = now_ns(CLOCK_REALTIME);
    if (gso) {
        ssize_t r;
        do r = send(s->fd, bufs, (size_t)n * (size_t)s->len, 0);
        while (r < 0 && errno == EINTR && !g_stop);
        if (r >= 0) s->sent += n;
        else if (errno == EIO || errno == EINVAL || errno == EOPNOTSUPP) { s->seq -= n; return 1; }
        else s->errors += n; /* ECONNREFUSED (no listener), ENOBUFS */
    } else {
        for (int off = 0; off < n && !g_stop;) {
            int r = sendmmsg(s->fd, mm + off, (unsigned)(n - off), 0);
            if (r > 0) { off += r; s->sent += r; continue; }
            if (r < 0 && errno == EINTR) continue;
            s->errors++;
            off++;
        }
    }
    s->last_ns = now_ns(CLOCK_REALTIME);
    return 0;
}

static int run_udp(const struct sockaddr_in *dst) {
    static struct stream st[MAX_STREAMS];
    int S = C.sources, gso = C.gso != 0, B = C.batch;
    for (int i = 0; i < S; i++) {
        st[i].id = i;
        ip_string(C.src_base + (uint32_t)i, st[i].ip);
        if (build_message(&st[i]) < 0) { fprintf(stderr, "--size too small\n"); return 2; }
        st[i].fd = source_socket(SOCK_DGRAM, i, dst);
        if (gso && setsockopt(st[i].fd, SOL_UDP, UDP_SEGMENT, &st[i].len, sizeof(int)) < 0) {
            if (C.gso == 1) die("setsockopt UDP_SEGMENT");
            gso = 0;
        }
    }
    if (B > GSO_MAX_SEGS) B = GSO_MAX_SEGS;
    if (B * st[0].len > GSO_MAX_BYTES) B = GSO_MAX_BYTES / st[0].len;
    if (B < 1) B = 1;
    char *bufs = malloc((size_t)B * (size_t)(MAX_MSG + 16));
    struct mmsghdr *mm = calloc((size_t)B, sizeof *mm);
    struct iovec *iov = calloc((size_t)B, sizeof *iov);
    if (!bufs || !mm || !iov) die("malloc");
    long total = C.rate > 0 ? (long)(C.rate * C.duration + 0.5) : C.count;
    if (C.rate > 0 && C.count > 0 && C.count < total) total = C.count;
    if (total <= 0) { fprintf(stderr, "udp needs --rate and --duration, or --count\n"); return 2; }
    double limit = C.max_time > 0 ? C.max_time : (C.rate > 0 ? C.duration * 1.5 + 1 : 60);
    /* pacing: wake once per tick and send the messages due, up to a batch, in one call */
    long quantum = C.rate > 0 ? (long)(C.rate * C.tick_us * 1e-6 + 0.5) : B;
    if (quantum < 1) quantum = 1;
    if (quantum > B) quantum = B;
    struct ts_cache tc = {0};
    long attempted = 0;
    int cur = 0;
    uint64_t t0 = now_ns(CLOCK_MONOTONIC), stop_at = t0 + (uint64_t)(limit * 1e9);
    if (C.rate > 0 && C.duration < limit) stop_at = t0 + (uint64_t)(C.duration * 1e9);
    while (attempted < total && !g_stop) {
        uint64_t t = now_ns(CLOCK_MONOTONIC);
        if (t >= stop_at) break;
        long due = total - attempted;
        if (C.rate > 0) {
            long allowed = (long)((double)(t - t0) * 1e-9 * C.rate) + 1;
            due = (allowed < total ? allowed : total) - attempted;
            if (due < quantum && attempted + due < total) {
                uint64_t next = t0 + (uint64_t)((double)(attempted + quantum - 1) / C.rate * 1e9);
                struct timespec ts = {.tv_sec = (time_t)(next / 1000000000ull),
                                      .tv_nsec = (long)(next % 1000000000ull)};
                clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
                continue;
            }
        }
        int n = due < B ? (int)due : B;
        if (send_udp_batch(&st[cur], n, gso, bufs, mm, iov, timestamp_now(&tc))) {
            gso = 0; /* the kernel refused GSO sends: sendmmsg from now on */
            continue;
        }
        attempted += n;
        cur = (cur + 1) % S;
    }
    double elapsed = (now_ns(CLOCK_MONOTONIC) - t0) / 1e9;
    print_summary(st, S, total, elapsed, gso, B);
    return 0;
}

/* ------------------------------------------------------------------ TCP */

static uint64_t g_deadline_mono;
static const struct sockaddr_in *g_dst;

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t r = write(fd, p, n);
        if (r < 0 && errno == EINTR && !g_stop) continue;
        if (r < 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static void *tcp_connection(void *arg) {
    struct stream *s = arg;
    long todo = s->errors; /* the count to send was parked here by run_tcp */
    s->errors = 0;
    s->fd = source_socket(SOCK_STREAM, s->id % C.sources, g_dst);
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int per_chunk = 256 * 1024 / s->len;
    if (per_chunk < 1) per_chunk = 1;
    char *chunk = malloc((size_t)per_chunk * (size_t)s->len);
    if (!chunk) die("malloc");
    for (int k = 0; k < per_chunk; k++) memcpy(chunk + (size_t)k * s->len, s->buf, s->len);
    struct ts_cache tc = {0};
    s->first_ns = now_ns(CLOCK_REALTIME);
    while (s->sent < todo && !g_stop) {
        if (now_ns(CLOCK_MONOTONIC) > g_deadline_mono) { s->err = ETIMEDOUT; break; }
        int n = todo - s->sent < per_chunk ? (int)(todo - s->sent) : per_chunk;
        const char *ts = timestamp_now(&tc);
        for (int k = 0; k < n; k++) {
            char *b = chunk + (size_t)k * s->len;
            memcpy(b + s->ts_off, ts, (size_t)s->ts_len);
            put_seq(b + s->seq_off, s->seq++);
        }
        if (write_all(s->fd, chunk, (size_t)n * s->len) < 0) {
            s->err = errno;
            s->errors = n; /* the chunk was not (wholly) written: its messages may be missing */
            break;
        }
        s->sent += n;
    }
    s->last_ns = now_ns(CLOCK_REALTIME);
    shutdown(s->fd, SHUT_WR);
    close(s->fd);
    free(chunk);
    return NULL;
}

static int run_tcp(const struct sockaddr_in *dst) {
    static struct stream st[MAX_STREAMS];
    static pthread_t th[MAX_STREAMS];
    int K = C.conns;
    if (C.count <= 0) { fprintf(stderr, "tcp needs --count\n"); return 2; }
    if (K > C.count) K = (int)C.count;
    g_dst = dst;
    g_deadline_mono = now_ns(CLOCK_MONOTONIC) +
                      (uint64_t)((C.max_time > 0 ? C.max_time : 300) * 1e9);
    for (int k = 0; k < K; k++) {
        st[k].id = k;
        ip_string(C.src_base + (uint32_t)(k % C.sources), st[k].ip);
        if (build_message(&st[k]) < 0) { fprintf(stderr, "--size too small\n"); return 2; }
        st[k].errors = C.count / K + (k < C.count % K ? 1 : 0);
    }
    uint64_t t0 = now_ns(CLOCK_MONOTONIC);
    for (int k = 0; k < K; k++) pthread_create(&th[k], NULL, tcp_connection, &st[k]);
    int failed = 0;
    for (int k = 0; k < K; k++) {
        pthread_join(th[k], NULL);
        if (st[k].err) {
            fprintf(stderr, "connection %d: %s\n", k, strerror(st[k].err));
            failed = 1;
        }
    }
    print_summary(st, K, C.count, (now_ns(CLOCK_MONOTONIC) - t0) / 1e9, 0, 0);
    return failed;
}

/* ------------------------------------------------------------------ main */

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen [options]   (see loadtest/loadgen.c)\n"
            "  --proto udp|tcp  --framing lf|octet  --format 3164|5424\n"
            "  --host 127.x.y.z --port N  --sources S  --src-base 127.0.0.2\n"
            "  --rate R (udp msgs/s, 0 = as fast as possible)  --duration S  --count N\n"
            "  --conns K  --size BYTES  --run TAG  --pad TEXT  --batch N  --gso auto|on|off\n"
            "  --max-time S  --pri N  --hostname H  --app A  --tick-us US\n");
    exit(2);
}

static uint32_t parse_loopback(const char *text) {
    struct in_addr a;
    if (inet_pton(AF_INET, text, &a) != 1 || (ntohl(a.s_addr) >> 24) != 127) {
        fprintf(stderr, "expecting an address in 127.0.0.0/8, got %s\n", text);
        exit(2);
    }
    return ntohl(a.s_addr);
}

static void copy_arg(char *dst, size_t size, const char *src) {
    if (strlen(src) >= size) { fprintf(stderr, "argument too long: %s\n", src); exit(2); }
    strcpy(dst, src);
}

int main(int argc, char **argv) {
    static struct option opts[] = {
        {"proto", 1, 0, 'P'}, {"framing", 1, 0, 'F'}, {"format", 1, 0, 'f'},
        {"host", 1, 0, 'h'}, {"port", 1, 0, 'p'}, {"sources", 1, 0, 'S'},
        {"src-base", 1, 0, 'B'}, {"rate", 1, 0, 'r'}, {"duration", 1, 0, 'd'},
        {"count", 1, 0, 'n'}, {"conns", 1, 0, 'c'}, {"size", 1, 0, 's'},
        {"run", 1, 0, 'R'}, {"pad", 1, 0, 'D'}, {"batch", 1, 0, 'b'}, {"gso", 1, 0, 'G'},
        {"max-time", 1, 0, 'T'}, {"pri", 1, 0, 'I'}, {"hostname", 1, 0, 'H'},
        {"app", 1, 0, 'A'}, {"tick-us", 1, 0, 'k'}, {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'P': C.tcp = !strcmp(optarg, "tcp"); if (!C.tcp && strcmp(optarg, "udp")) usage(); break;
        case 'F': C.octet = !strcmp(optarg, "octet"); if (!C.octet && strcmp(optarg, "lf")) usage(); break;
        case 'f': C.fmt = atoi(optarg); break;
        case 'h': copy_arg(C.host, sizeof C.host, optarg); break;
        case 'p': C.port = atoi(optarg); break;
        case 'S': C.sources = atoi(optarg); break;
        case 'B': C.src_base = parse_loopback(optarg); break;
        case 'r': C.rate = atof(optarg); break;
        case 'd': C.duration = atof(optarg); break;
        case 'n': C.count = atol(optarg); break;
        case 'c': C.conns = atoi(optarg); break;
        case 's': C.size = atoi(optarg); break;
        case 'R': copy_arg(C.run, sizeof C.run, optarg); break;
        case 'D': copy_arg(C.pad, sizeof C.pad, optarg); break;
        case 'b': C.batch = atoi(optarg); break;
        case 'G': C.gso = !strcmp(optarg, "on") ? 1 : !strcmp(optarg, "off") ? 0 : -1; break;
        case 'T': C.max_time = atof(optarg); break;
        case 'I': C.pri = atoi(optarg); break;
        case 'H': copy_arg(C.hostname, sizeof C.hostname, optarg); break;
        case 'A': copy_arg(C.app, sizeof C.app, optarg); break;
        case 'k': C.tick_us = atof(optarg); break;
        default: usage();
        }
    }
    if (C.fmt != 3164 && C.fmt != 5424) usage();
    if (C.size < 16 || C.size > MAX_MSG || !C.pad[0] || C.batch < 1) usage();
    if (C.sources < 1 || C.sources > MAX_STREAMS || C.conns < 1 || C.conns > MAX_STREAMS) usage();
    if (((C.src_base + (uint32_t)C.sources - 1) >> 24) != 127) {
        fprintf(stderr, "sources must stay within 127.0.0.0/8\n");
        return 2;
    }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)C.port)};
    dst.sin_addr.s_addr = htonl(parse_loopback(C.host));
    prctl(PR_SET_TIMERSLACK, 1UL);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int rc = C.tcp ? run_tcp(&dst) : run_udp(&dst);
    fflush(stdout);
    return rc;
}
