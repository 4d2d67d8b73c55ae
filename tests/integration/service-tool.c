/*
 * service-tool.c - small helpers for the service tests (service-*.sh), so they need nothing
 * beyond a POSIX shell:
 *
 *   service-tool gen BYTES SEED     BYTES pseudo-random bytes on stdout, the same for a seed
 *   service-tool tcp-copy FILE...   the files' bytes over one plain TCP connection on
 *                                   127.0.0.1, best of 3: "tcp-copy: N bytes in S s (R MiB/s)"
 *
 * gen makes padding that a resumed upload cannot get right by accident (zeros would look right
 * from any offset). tcp-copy is the loopback ceiling the service's upload and download rates
 * are reported against: a sender thread writes the bytes (read into memory first), a receiver
 * thread reads them into a buffer and drops them; the clock runs from the first write to the
 * receiver's end of stream.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BUF (1u << 20)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int parse_u64(const char *s, uint64_t *ret) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-') return -1;
    *ret = v;
    return 0;
}

/* xorshift64*: fast, and the same bytes on every machine for a seed. */
static int gen(uint64_t n, uint64_t seed) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    unsigned char *buf = malloc(BUF);
    if (!buf) return 1;
    while (n > 0) {
        size_t k = n < BUF ? (size_t)n : BUF;
        for (size_t i = 0; i < k; i += 8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            uint64_t v = x * 0x2545F4914F6CDD1Dull;
            memcpy(buf + i, &v, k - i < 8 ? k - i : 8);
        }
        if (fwrite(buf, 1, k, stdout) != k) {
            free(buf);
            return 1;
        }
        n -= k;
    }
    free(buf);
    return fflush(stdout) != 0;
}

struct receiver {
    int listen_fd;
    uint64_t got;
    double end;
};

static void *receive(void *arg) {
    struct receiver *r = arg;
    int fd = accept(r->listen_fd, NULL, NULL);
    char *buf = malloc(BUF);
    if (fd >= 0 && buf) {
        ssize_t k;
        while ((k = read(fd, buf, BUF)) > 0 || (k < 0 && errno == EINTR))
            if (k > 0) r->got += (uint64_t)k;
    }
    r->end = now_s();
    free(buf);
    if (fd >= 0) close(fd);
    return NULL;
}

static int send_all(int fd, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* One connection: send data, return the seconds until the receiver saw all of it. */
static double copy_once(const unsigned char *data, size_t n) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    struct receiver r = {.listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    if (r.listen_fd < 0 || bind(r.listen_fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(r.listen_fd, 1) != 0 || getsockname(r.listen_fd, (struct sockaddr *)&a, &alen) != 0)
        return -1;
    pthread_t t;
    if (pthread_create(&t, NULL, receive, &r) != 0) return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    double t0 = -1;
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
        t0 = now_s();
        if (send_all(fd, data, n) != 0) t0 = -1;
    }
    if (fd >= 0) close(fd);
    pthread_join(t, NULL);
    close(r.listen_fd);
    if (t0 < 0 || r.got != n) return -1;
    return r.end - t0;
}

static int tcp_copy(int n_files, char **files) {
    size_t total = 0, cap = 0;
    unsigned char *data = NULL;
    for (int i = 0; i < n_files; i++) {
        int fd = open(files[i], O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) {
            fprintf(stderr, "service-tool: %s: %s\n", files[i], strerror(errno));
            return 1;
        }
        size_t need = total + (size_t)st.st_size;
        if (need > cap) {
            unsigned char *p = realloc(data, need ? need : 1);
            if (!p) return 1;
            data = p;
            cap = need;
        }
        size_t off = 0;
        while (off < (size_t)st.st_size) {
            ssize_t k = read(fd, data + total + off, (size_t)st.st_size - off);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) return 1;
            off += (size_t)k;
        }
        total += off;
        close(fd);
    }
    double best = -1;
    for (int rep = 0; rep < 3; rep++) {
        double s = copy_once(data, total);
        if (s < 0) {
            fprintf(stderr, "service-tool: tcp-copy failed\n");
            free(data);
            return 1;
        }
        if (best < 0 || s < best) best = s;
    }
    printf("tcp-copy: %zu bytes in %.4f s (%.1f MiB/s)\n", total, best,
           best > 0 ? (double)total / best / (1024.0 * 1024.0) : 0.0);
    free(data);
    return 0;
}

int main(int argc, char **argv) {
    uint64_t n, seed;
    if (argc == 4 && strcmp(argv[1], "gen") == 0 && parse_u64(argv[2], &n) == 0 &&
        parse_u64(argv[3], &seed) == 0)
        return gen(n, seed);
    if (argc >= 3 && strcmp(argv[1], "tcp-copy") == 0) return tcp_copy(argc - 2, argv + 2);
    fprintf(stderr, "usage: service-tool gen BYTES SEED | tcp-copy FILE...\n");
    return 2;
}
