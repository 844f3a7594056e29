/*
 * The ends and the physical limits of bench/proxy.rb and bench/copy_stream.rb,
 * over TCP on 127.0.0.1:
 *
 *   proxy_tools consume          listen, print the port, splice one
 *                                connection to /dev/null until EOF, print
 *                                "bytes seconds" (from the first byte)
 *   proxy_tools produce PORT N   connect to PORT, send N bytes with
 *                                sendfile(2) from a memfd, close
 *   proxy_tools splice PORT      listen (port printed), accept one
 *                                connection, copy it to PORT through a pipe
 *                                with splice(2): no byte in user space
 *   proxy_tools readwrite PORT   the same with read(2)/write(2) and a 64 KiB
 *                                buffer
 *   proxy_tools uring PORT       the splice proxy as io_uring operations:
 *                                socket->pipe hard linked to pipe->socket,
 *                                one submission per pipeful
 *   proxy_tools sendfile FILE PORT
 *                                connect to PORT, sendfile(2) FILE to it
 *   proxy_tools receive FILE     listen (port printed), accept one
 *                                connection, splice it into FILE; print
 *                                "bytes seconds"
 *
 * Pipes are given 1 MiB (the default pipe-max-size) where the system
 * allows, as IO.copy_stream's are.  The uring mode needs liburing:
 * cc -O2 -DHAVE_LIBURING -I<liburing>/include proxy_tools.c <liburing>/lib/liburing.a
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_LIBURING
#include <liburing.h>
#endif

#define CHUNK (1 << 16)

#define PIPE_SIZE (1 << 20)
#define SOURCE_SIZE (4 << 20)

static void
die(const char *what)
{
    perror(what);
    exit(1);
}

static double
now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A listening socket on 127.0.0.1; its port is printed on stdout. */
static int
listen_any(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0) die("socket");
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) die("bind");
    if (listen(fd, 1) < 0) die("listen");
    if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0) die("getsockname");
    printf("%d\n", ntohs(sa.sin_port));
    fflush(stdout);
    return fd;
}

static int
accept_one(int listener)
{
    int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);

    if (fd < 0) die("accept");
    close(listener);
    return fd;
}

static int
connect_to(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0) die("socket");
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) die("connect");
    return fd;
}

/* A pipe of up to PIPE_SIZE; returns its capacity. */
static size_t
make_pipe(int p[2])
{
    int size;

    if (pipe2(p, O_CLOEXEC) < 0) die("pipe2");
    fcntl(p[1], F_SETPIPE_SZ, PIPE_SIZE);
    size = fcntl(p[1], F_GETPIPE_SZ);
    return size > 0 ? (size_t)size : CHUNK;
}

/* Everything from `in` to `out` through a pipe with splice(2). */
static long long
splice_all(int in, int out)
{
    int p[2];
    size_t chunk = make_pipe(p);
    long long total = 0;

    for (;;) {
        ssize_t n = splice(in, NULL, p[1], NULL, chunk, SPLICE_F_MOVE | SPLICE_F_MORE);
        if (n < 0) die("splice in");
        if (n == 0) break;
        total += n;
        while (n > 0) {
            ssize_t m = splice(p[0], NULL, out, NULL, n, SPLICE_F_MOVE | SPLICE_F_MORE);
            if (m < 0) die("splice out");
            n -= m;
        }
    }
    close(p[0]);
    close(p[1]);
    return total;
}

/* The consumer costs as little as it can, so the proxy is what is
 * measured: the bytes go from the socket through a pipe to /dev/null, never
 * into user space.  The clock starts at the first byte. */
static void
consume(void)
{
    int fd = accept_one(listen_any()), null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    int p[2];
    size_t chunk = make_pipe(p);
    long long total = 0;
    double t0 = 0;
    ssize_t n;

    if (null < 0) die("/dev/null");
    while ((n = splice(fd, NULL, p[1], NULL, chunk, SPLICE_F_MOVE)) > 0) {
        if (total == 0) t0 = now();
        total += n;
        while (n > 0) {
            ssize_t m = splice(p[0], NULL, null, NULL, n, SPLICE_F_MOVE);
            if (m < 0) die("splice to /dev/null");
            n -= m;
        }
    }
    if (n < 0) die("splice from the socket");
    printf("%lld %.6f\n", total, now() - t0);
}

/* Cheap as well: sendfile(2) from a 4 MiB in-memory file, over and over. */
static void
produce(int port, long long bytes)
{
    int fd = connect_to(port), src = memfd_create("proxy_tools", MFD_CLOEXEC);
    static char buf[CHUNK];
    size_t i;

    if (src < 0) die("memfd_create");
    memset(buf, 'x', sizeof(buf));
    for (i = 0; i < (SOURCE_SIZE / CHUNK); i++) {
        if (write(src, buf, CHUNK) != CHUNK) die("write");
    }
    while (bytes > 0) {
        off_t off = 0;
        size_t want = bytes < SOURCE_SIZE ? (size_t)bytes : SOURCE_SIZE;

        while (off < (off_t)want) {
            ssize_t n = sendfile(fd, src, &off, want - off);
            if (n <= 0) die("sendfile");
        }
        bytes -= want;
    }
    close(src);
    close(fd);
}

static void
splice_proxy(int port)
{
    int in = accept_one(listen_any()), out = connect_to(port);

    splice_all(in, out);
    close(out);
}

static void
sendfile_to(const char *path, int port)
{
    int in = open(path, O_RDONLY | O_CLOEXEC), out = connect_to(port);
    struct stat st;
    off_t left;

    if (in < 0 || fstat(in, &st) < 0) die(path);
    for (left = st.st_size; left > 0;) {
        ssize_t n = sendfile(out, in, NULL, left);
        if (n <= 0) die("sendfile");
        left -= n;
    }
    close(out);
}

static void
receive_into(const char *path)
{
    int in = accept_one(listen_any());
    int out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    double t0 = now();
    long long total;

    if (out < 0) die(path);
    total = splice_all(in, out);
    printf("%lld %f\n", total, now() - t0);
    close(out);
}

static void
readwrite_proxy(int port)
{
    int in = accept_one(listen_any()), out = connect_to(port);
    static char buf[CHUNK];
    ssize_t n;

    while ((n = read(in, buf, sizeof(buf))) > 0) {
        for (ssize_t off = 0; off < n;) {
            ssize_t m = write(out, buf + off, n - off);
            if (m < 0) die("write");
            off += m;
        }
    }
    if (n < 0) die("read");
    close(out);
}

#ifdef HAVE_LIBURING
/*
 * One submission per chunk: splice up to CHUNK bytes socket->pipe, hard
 * linked to pipe->socket (SPLICE_F_NONBLOCK on the pipe side, so a short or
 * empty first half never leaves the second half waiting on the pipe).
 * What the second half left in the pipe is drained before the next chunk.
 */
static void
uring_proxy(int port)
{
    int in = accept_one(listen_any()), out = connect_to(port), p[2];
    struct io_uring ring;
    struct io_uring_sqe *sqe;
    struct io_uring_cqe *cqe;
    size_t chunk = make_pipe(p);

    if (io_uring_queue_init(8, &ring, 0) < 0) die("io_uring_queue_init");
    for (;;) {
        int res[2] = {0, 0};
        sqe = io_uring_get_sqe(&ring);
        io_uring_prep_splice(sqe, in, -1, p[1], -1, chunk, SPLICE_F_MOVE);
        sqe->flags |= IOSQE_IO_HARDLINK;
        sqe->user_data = 0;
        sqe = io_uring_get_sqe(&ring);
        io_uring_prep_splice(sqe, p[0], -1, out, -1, chunk, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        sqe->user_data = 1;
        if (io_uring_submit_and_wait(&ring, 2) < 0) die("io_uring_submit_and_wait");
        for (int i = 0; i < 2; i++) {
            if (io_uring_wait_cqe(&ring, &cqe) < 0) die("io_uring_wait_cqe");
            res[cqe->user_data] = cqe->res;
            io_uring_cqe_seen(&ring, cqe);
        }
        if (res[0] < 0) { errno = -res[0]; die("splice in"); }
        if (res[0] == 0) break;
        if (res[1] < 0 && res[1] != -EAGAIN) { errno = -res[1]; die("splice out"); }
        for (ssize_t left = res[0] - (res[1] > 0 ? res[1] : 0); left > 0;) {
            ssize_t m = splice(p[0], NULL, out, NULL, left, SPLICE_F_MOVE);
            if (m < 0) die("splice out");
            left -= m;
        }
    }
    io_uring_queue_exit(&ring);
    close(out);
}
#endif

int
main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "consume") == 0) consume();
    else if (argc >= 4 && strcmp(argv[1], "produce") == 0) produce(atoi(argv[2]), atoll(argv[3]));
    else if (argc >= 3 && strcmp(argv[1], "splice") == 0) splice_proxy(atoi(argv[2]));
    else if (argc >= 3 && strcmp(argv[1], "readwrite") == 0) readwrite_proxy(atoi(argv[2]));
#ifdef HAVE_LIBURING
    else if (argc >= 3 && strcmp(argv[1], "uring") == 0) uring_proxy(atoi(argv[2]));
#endif
    else if (argc >= 4 && strcmp(argv[1], "sendfile") == 0) sendfile_to(argv[2], atoi(argv[3]));
    else if (argc >= 3 && strcmp(argv[1], "receive") == 0) receive_into(argv[2]);
    else {
        fprintf(stderr, "usage: %s consume | produce PORT BYTES | splice PORT | readwrite PORT | uring PORT | sendfile FILE PORT | receive FILE\n", argv[0]);
        return 2;
    }
    return 0;
}
