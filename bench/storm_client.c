/* storm_client: open many SSE connections at once and report when all are live.
 *
 * Used by bench/reconnect_storm.py. Reads requests from a file (each one ends with an
 * empty line, "\r\n\r\n"), opens one connection per request to 127.0.0.1:PORT with at
 * most INFLIGHT connects in flight, and counts for each connection the "data:" fields
 * after its response head. A connection is live once it has its head and EXPECTED
 * events. Prints one line when all are live ("replayed <seconds since start>"), then
 * waits until each has one event more (the live message the driver publishes) and
 * prints "live <unix time> <events>". Exits 1 on a connection error or after TIMEOUT s.
 *
 *   storm_client PORT REQUESTS_FILE EXPECTED INFLIGHT TIMEOUT
 *
 * Only loopback: the address is fixed to 127.0.0.1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    const char *request;
    size_t request_len, sent;
    int head;          /* response head received */
    long events;       /* "data:" fields after the head */
    char tail[8];      /* the last bytes read, for a field split across reads */
    size_t tail_len;
    char headbuf[4096];
    size_t head_len;
} conn_t;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long count_fields(const char *data, size_t len) {
    long n = 0;
    for (const char *p = data; (p = memmem(p, len - (p - data), "data:", 5)); p += 5) n++;
    return n;
}

static void take(conn_t *c, const char *data, size_t len) {
    if (!c->head) {
        size_t room = sizeof c->headbuf - c->head_len;
        size_t copy = len < room ? len : room;
        memcpy(c->headbuf + c->head_len, data, copy);
        c->head_len += copy;
        char *end = memmem(c->headbuf, c->head_len, "\r\n\r\n", 4);
        if (!end) return;
        c->head = 1;
        size_t rest = c->head_len - (end + 4 - c->headbuf);
        take(c, end + 4, rest);
        return;
    }
    /* Count fields in tail + data without double-counting the tail's own. */
    char joined[8 + 65536];
    size_t n = len < 65536 ? len : 65536;
    memcpy(joined, c->tail, c->tail_len);
    memcpy(joined + c->tail_len, data, n);
    c->events += count_fields(joined, c->tail_len + n) - count_fields(c->tail, c->tail_len);
    size_t keep = (c->tail_len + n) < 4 ? (c->tail_len + n) : 4;
    memmove(c->tail, joined + c->tail_len + n - keep, keep);
    c->tail_len = keep;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: storm_client PORT REQUESTS_FILE EXPECTED INFLIGHT TIMEOUT\n");
        return 2;
    }
    int port = atoi(argv[1]);
    long expected = atol(argv[3]);
    int inflight = atoi(argv[4]);
    double timeout = atof(argv[5]);
    struct rlimit lim = {20000, 20000};
    setrlimit(RLIMIT_NOFILE, &lim);

    FILE *f = fopen(argv[2], "rb");
    if (!f) { perror("requests"); return 2; }
    struct stat st;
    fstat(fileno(f), &st);
    char *all = malloc(st.st_size + 1);
    if (fread(all, 1, st.st_size, f) != (size_t)st.st_size) { perror("read"); return 2; }
    all[st.st_size] = 0;
    fclose(f);
    size_t count = 0;
    for (char *p = all; (p = strstr(p, "\r\n\r\n")); p += 4) count++;
    conn_t *conns = calloc(count, sizeof *conns);
    char *p = all;
    for (size_t i = 0; i < count; i++) {
        char *end = strstr(p, "\r\n\r\n") + 4;
        conns[i].request = p;
        conns[i].request_len = end - p;
        conns[i].fd = -1;
        p = end;
    }

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    int ep = epoll_create1(0);
    double start = now();
    size_t next = 0, open_now = 0, live = 0;
    long target = expected;
    int phase = 0; /* 0: replay, 1: live message */
    struct epoll_event events[512];
    char buf[65536];
    while (1) {
        while (next < count && open_now < (size_t)inflight) {
            conn_t *c = &conns[next];
            c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            int one = 1;
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
                perror("connect");
                return 1;
            }
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
            next++;
            open_now++;
        }
        if (now() - start > timeout) {
            fprintf(stderr, "timeout: %zu of %zu live\n", live, count);
            return 1;
        }
        int n = epoll_wait(ep, events, 512, 100);
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if ((events[i].events & EPOLLOUT) && c->sent < c->request_len) {
                ssize_t w = write(c->fd, c->request + c->sent, c->request_len - c->sent);
                if (w > 0) c->sent += w;
                if (c->sent == c->request_len) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                ssize_t r = read(c->fd, buf, sizeof buf);
                if (r <= 0 && !(r < 0 && errno == EAGAIN)) {
                    fprintf(stderr, "connection closed by the server\n");
                    return 1;
                }
                if (r > 0) {
                    int was_live = c->head && c->events >= target;
                    int was_head = c->head;
                    take(c, buf, r);
                    if (!was_head && c->head && open_now > 0) open_now--; /* handshake done */
                    if (!was_live && c->head && c->events >= target) live++;
                }
            }
        }
        if (live == count) {
            if (phase == 0) {
                printf("replayed %.4f\n", now() - start);
                fflush(stdout);
                phase = 1;
                target = expected + 1;
                live = 0;
                for (size_t i = 0; i < count; i++)
                    if (conns[i].events >= target) live++;
                start = now(); /* the live phase gets its own timeout */
                if (live < count) continue;
            }
            long total = 0;
            for (size_t i = 0; i < count; i++) total += conns[i].events;
            printf("live %.4f %ld\n", wall(), total);
            return 0;
        }
    }
}
