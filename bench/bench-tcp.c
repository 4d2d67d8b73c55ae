/*
 * bench-tcp.c - the loopback ceiling for the service benchmark: the bytes of some files sent
 * over one plain TCP connection on 127.0.0.1, with nothing on top.
 *
 *   bench-tcp FILE... [--reps 3] [--tsv]
 *
 * The files are mapped and read once (so they are in the page cache), then sent --reps times
 * from one thread to a receiver thread that reads them into a 1 MiB buffer and drops them.
 * Prints the bytes, the best time and MiB/s. bench/run compares quantctl's upload and download
 * of the same model directory with this figure: what the service adds on top of the socket
 * (framing, hashing, the store's disk writes) is the difference.
 *
 * DESIGN
 * One connection per repetition, opened before the clock starts; the clock stops when the
 * receiver has read the last byte (it joins the sender's close). Both ends run in this process
 * so there is no second program to start and no port to agree on: the listener binds port 0
 * and the sender connects to whatever port the kernel chose.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_FILES 4096
#define RECV_BUF (1u << 20)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct mapped {
    const char *data;
    size_t len;
} mapped;

/* What the receiver thread needs and reports. */
typedef struct receiver {
    int fd;          /* accepted connection */
    uint64_t got;    /* bytes read */
    double t_end;    /* when the last byte arrived */
    int error;       /* errno of a failed read, 0 if none */
} receiver;

static void *receive_main(void *arg) {
    receiver *r = arg;
    char *buf = malloc(RECV_BUF);
    if (!buf) {
        r->error = ENOMEM;
        return NULL;
    }
    for (;;) {
        ssize_t n = read(r->fd, buf, RECV_BUF);
        if (n > 0) {
            r->got += (uint64_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) r->error = errno;
        break;
    }
    r->t_end = now_s();
    free(buf);
    return NULL;
}

/* Write all of buf to fd. 0, or an errno. */
static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* One transfer of every file over a fresh connection: seconds from the first byte written to
 * the last byte read, or < 0 on failure (message on stderr). */
static double one_transfer(int listener, const struct sockaddr_in *addr, const mapped *files,
                           int n_files, uint64_t total) {
    int out = socket(AF_INET, SOCK_STREAM, 0);
    if (out < 0 || connect(out, (const struct sockaddr *)addr, sizeof *addr) != 0) {
        fprintf(stderr, "bench-tcp: connect to 127.0.0.1:%d: %s\n", ntohs(addr->sin_port),
                strerror(errno));
        if (out >= 0) close(out);
        return -1.0;
    }
    receiver r = {.fd = accept(listener, NULL, NULL)};
    if (r.fd < 0) {
        fprintf(stderr, "bench-tcp: accept: %s\n", strerror(errno));
        close(out);
        return -1.0;
    }
    pthread_t tid;
    if (pthread_create(&tid, NULL, receive_main, &r) != 0) {
        fprintf(stderr, "bench-tcp: could not start the receiver thread\n");
        close(out);
        close(r.fd);
        return -1.0;
    }
    double t0 = now_s();
    int werr = 0;
    for (int i = 0; i < n_files && !werr; i++) werr = write_all(out, files[i].data, files[i].len);
    close(out); /* the receiver sees end of file after the last byte */
    pthread_join(tid, NULL);
    close(r.fd);
    if (werr || r.error || r.got != total) {
        fprintf(stderr, "bench-tcp: transfer failed: %s (%llu of %llu bytes received)\n",
                strerror(werr ? werr : r.error ? r.error : EIO), (unsigned long long)r.got,
                (unsigned long long)total);
        return -1.0;
    }
    return r.t_end - t0;
}

static void usage(void) {
    fprintf(stderr, "usage: bench-tcp FILE... [--reps 3] [--tsv]\n");
}

int main(int argc, char **argv) {
    static mapped files[MAX_FILES];
    int n_files = 0;
    long reps = 3;
    bool tsv = false;
    uint64_t total = 0;
    int status = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tsv") == 0) {
            tsv = true;
        } else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            char *end = NULL;
            errno = 0;
            reps = strtol(argv[++i], &end, 10);
            if (errno || end == argv[i] || *end || reps < 1 || reps > 100) {
                usage();
                return 2;
            }
        } else if (argv[i][0] == '-' || n_files == MAX_FILES) {
            usage();
            return 2;
        } else {
            int fd = open(argv[i], O_RDONLY);
            struct stat st;
            if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
                fprintf(stderr, "bench-tcp: %s: not a readable regular file\n", argv[i]);
                if (fd >= 0) close(fd);
                goto done;
            }
            files[n_files].len = (size_t)st.st_size;
            files[n_files].data = "";
            if (st.st_size > 0) {
                void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
                if (p == MAP_FAILED) {
                    fprintf(stderr, "bench-tcp: %s: mmap: %s\n", argv[i], strerror(errno));
                    close(fd);
                    goto done;
                }
                files[n_files].data = p;
            }
            close(fd);
            total += (uint64_t)st.st_size;
            n_files++;
        }
    }
    if (n_files == 0) {
        usage();
        return 2;
    }
    /* touch every page once so the first transfer does not pay for the reads from disk */
    volatile unsigned char sink = 0;
    for (int i = 0; i < n_files; i++)
        for (size_t o = 0; o < files[i].len; o += 4096) sink ^= (unsigned char)files[i].data[o];
    (void)sink;

    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof addr;
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        listen(listener, 1) != 0 || getsockname(listener, (struct sockaddr *)&addr, &alen) != 0) {
        fprintf(stderr, "bench-tcp: listen on 127.0.0.1: %s\n", strerror(errno));
        if (listener >= 0) close(listener);
        goto done;
    }
    double best = -1.0;
    for (long r = 0; r < reps; r++) {
        double dt = one_transfer(listener, &addr, files, n_files, total);
        if (dt < 0) {
            close(listener);
            goto done;
        }
        if (best < 0 || dt < best) best = dt;
    }
    close(listener);
    double mibs = best > 0 ? (double)total / (1 << 20) / best : 0.0;
    if (tsv) {
        printf("bytes\t%llu\nfiles\t%d\nbest_s\t%.6f\nmib_per_s\t%.1f\n",
               (unsigned long long)total, n_files, best, mibs);
    } else {
        printf("bench-tcp: %d files, %.1f MiB over 127.0.0.1, best of %ld: %.3f s, %.0f MiB/s\n",
               n_files, (double)total / (1 << 20), reps, best, mibs);
    }
    status = 0;
done:
    for (int i = 0; i < n_files; i++)
        if (files[i].len > 0) munmap((void *)files[i].data, files[i].len);
    return status;
}
