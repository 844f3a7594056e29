/*
 * The ends and the physical limits of bench/proxy.rb and bench/copy_stream.rb.
 *
 * bench/proxy.rb:
 *
 *   proxy_tools harness [-t SECONDS] unix|tcp BYTES -- PROXY_COMMAND...
 *       The producer and the consumer around one proxy.  Two connected
 *       stream socket pairs of the chosen transport -- socketpair(2) for
 *       unix, connect(2) + accept(2) on 127.0.0.1 for tcp -- (producer,
 *       proxy in) and (proxy out, consumer).  PROXY_COMMAND is run with
 *       "proxy in" as descriptor 3, "proxy out" as descriptor 4, stdout a
 *       pipe to the harness, stdin /dev/null and nothing else open; it
 *       copies 3 to 4 until EOF, closes 4, and writes the line "ready" to
 *       stdout once it is set up (and before it reads anything).  The clock
 *       starts at "ready"; then a thread of the harness sends BYTES with
 *       sendfile(2) from a memfd and shuts its end down, while another
 *       thread, started before, splices everything the consumer end gets
 *       into /dev/null and stops the clock at EOF.  Prints one line,
 *
 *         bytes seconds user sys setup_user setup_sys
 *
 *       bytes as received, seconds from "ready" to EOF, user and sys the
 *       CPU seconds the proxy process (all its threads, io_uring workers
 *       included) spent after "ready": its rusage from wait4(2) less
 *       setup_user and setup_sys, what /proc/PID/stat (clock ticks) showed
 *       at "ready".  The harness's own threads are not in those figures.
 *       Exits 1 if the proxy failed, was killed (with its process group,
 *       after SECONDS, default 600, or on SIGINT/SIGTERM to the harness),
 *       or the byte count is wrong.
 *   proxy_tools splice-fds       a proxy for the harness: splice(2) through
 *                                a pipe: no byte in user space (the limit)
 *   proxy_tools splice-nonblock-fds
 *                                the same on O_NONBLOCK descriptors (as
 *                                ruby's are), poll(2) when a side is not
 *                                ready: the limit for a runtime like ruby
 *   proxy_tools uring-fds        the same splices as io_uring operations:
 *                                socket->pipe hard linked to pipe->socket,
 *                                one submission per pipeful
 *   proxy_tools readwrite-fds    read(2)/write(2) with a 64 KiB buffer
 *
 * bench/copy_stream.rb, over TCP on 127.0.0.1:
 *
 *   proxy_tools consume          listen, print the port, splice one
 *                                connection to /dev/null until EOF, print
 *                                "bytes seconds" (from the first byte)
 *   proxy_tools produce PORT N   connect to PORT, send N bytes with
 *                                sendfile(2) from a memfd, close
 *   proxy_tools sendfile FILE PORT
 *                                connect to PORT, sendfile(2) FILE to it;
 *                                print the CPU seconds it took
 *   proxy_tools receive FILE     listen (port printed), accept one
 *                                connection, splice it into FILE; print
 *                                "bytes seconds cpu_seconds"
 *
 * Pipes are given 1 MiB (the default pipe-max-size) where the system
 * allows, as IO.copy_stream's are.  The uring mode needs liburing:
 * cc -O2 -DHAVE_LIBURING -I<liburing>/include proxy_tools.c <liburing>/lib/liburing.a -lpthread
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_LIBURING
#include <liburing.h>
#endif

#define CHUNK (1 << 16)

#define PIPE_SIZE (1 << 20)
#define SOURCE_SIZE (4 << 20)

/* The descriptors a proxy run by the harness copies between. */
#define PROXY_IN 3
#define PROXY_OUT 4

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

/* A listening socket on 127.0.0.1 with an ephemeral port. */
static int
listener(int *port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0) die("socket");
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) die("bind");
    if (listen(fd, 2) < 0) die("listen");
    if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0) die("getsockname");
    *port = ntohs(sa.sin_port);
    return fd;
}

/* The same, its port printed on stdout. */
static int
listen_any(void)
{
    int port, fd = listener(&port);

    printf("%d\n", port);
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

/* Everything from `in` to `out` through the pipe `p` (of `chunk` bytes)
 * with splice(2); -1 with errno set on an error. */
static long long
splice_through(int in, int out, int p[2], size_t chunk)
{
    long long total = 0;

    for (;;) {
        ssize_t n = splice(in, NULL, p[1], NULL, chunk, SPLICE_F_MOVE | SPLICE_F_MORE);
        if (n < 0) return -1;
        if (n == 0) break;
        total += n;
        while (n > 0) {
            ssize_t m = splice(p[0], NULL, out, NULL, n, SPLICE_F_MOVE | SPLICE_F_MORE);
            if (m < 0) return -1;
            n -= m;
        }
    }
    return total;
}

/* Everything from `in` to `out` through a new pipe. */
static long long
splice_all(int in, int out)
{
    int p[2];
    size_t chunk = make_pipe(p);
    long long total = splice_through(in, out, p, chunk);

    if (total < 0) die("splice");
    close(p[0]);
    close(p[1]);
    return total;
}

/* A 4 MiB in-memory file the producers send from, over and over. */
static int
make_source(void)
{
    int src = memfd_create("proxy_tools", MFD_CLOEXEC);
    static char buf[CHUNK];
    size_t i;

    if (src < 0) die("memfd_create");
    memset(buf, 'x', sizeof(buf));
    for (i = 0; i < (SOURCE_SIZE / CHUNK); i++) {
        if (write(src, buf, CHUNK) != CHUNK) die("write");
    }
    return src;
}

/* `bytes` from `src` (make_source) to `fd`; 0, or -1 with errno set. */
static int
send_bytes(int fd, int src, long long bytes)
{
    while (bytes > 0) {
        off_t off = 0;
        size_t want = bytes < SOURCE_SIZE ? (size_t)bytes : SOURCE_SIZE;

        while (off < (off_t)want) {
            ssize_t n = sendfile(fd, src, &off, want - off);
            if (n < 0) return -1;
            if (n == 0) { errno = EPIPE; return -1; }
        }
        bytes -= want;
    }
    return 0;
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

/* Cheap as well: sendfile(2) from a 4 MiB in-memory file. */
static void
produce(int port, long long bytes)
{
    int fd = connect_to(port), src = make_source();

    if (send_bytes(fd, src, bytes) < 0) die("sendfile");
    close(src);
    close(fd);
}

/* CPU seconds (user + sys) of this process, all its threads. */
static double
cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
sendfile_to(const char *path, int port)
{
    int in = open(path, O_RDONLY | O_CLOEXEC), out = connect_to(port);
    struct stat st;
    off_t left;
    double c0 = cpu_now();

    if (in < 0 || fstat(in, &st) < 0) die(path);
    for (left = st.st_size; left > 0;) {
        ssize_t n = sendfile(out, in, NULL, left);
        if (n <= 0) die("sendfile");
        left -= n;
    }
    close(out);
    printf("%f\n", cpu_now() - c0);
}

static void
receive_into(const char *path)
{
    int in = accept_one(listen_any());
    int out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    double t0 = now(), c0 = cpu_now();
    long long total;

    if (out < 0) die(path);
    total = splice_all(in, out);
    printf("%lld %f %f\n", total, now() - t0, cpu_now() - c0);
    close(out);
}

/* ---- the harness ---------------------------------------------------- */

/* A connected stream pair of `transport`: *a the connecting end, *b the
 * accepting one (for unix, the two ends of a socketpair). */
static int
stream_pair(const char *transport, int *a, int *b)
{
    if (strcmp(transport, "unix") == 0) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) die("socketpair");
        *a = sv[0];
        *b = sv[1];
        return 0;
    }
    if (strcmp(transport, "tcp") == 0) {
        int port, l = listener(&port);
        *a = connect_to(port);
        *b = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        if (*b < 0) die("accept");
        close(l);
        return 0;
    }
    return -1;
}

struct end {
    int fd;             /* the harness's end of a pair */
    int src, null;      /* the producer's memfd, the consumer's /dev/null */
    long long bytes;    /* to send, or received */
    double t_end;       /* the consumer: EOF */
    int error;          /* errno of a failure */
    const char *what;   /* and what failed */
};

static void *
producer_main(void *arg)
{
    struct end *e = arg;

    if (send_bytes(e->fd, e->src, e->bytes) < 0) {
        e->error = errno;
        e->what = "producer: sendfile";
    }
    shutdown(e->fd, SHUT_WR);
    close(e->fd);
    return NULL;
}

static void *
consumer_main(void *arg)
{
    struct end *e = arg;
    int p[2];
    size_t chunk = make_pipe(p);
    ssize_t n;

    while ((n = splice(e->fd, NULL, p[1], NULL, chunk, SPLICE_F_MOVE)) > 0) {
        e->bytes += n;
        while (n > 0) {
            ssize_t m = splice(p[0], NULL, e->null, NULL, n, SPLICE_F_MOVE);
            if (m < 0) {
                e->error = errno;
                e->what = "consumer: splice to /dev/null";
                goto done;
            }
            n -= m;
        }
    }
    if (n < 0) {
        e->error = errno;
        e->what = "consumer: splice from the socket";
    }
  done:
    e->t_end = now();
    close(e->fd);
    close(p[0]);
    close(p[1]);
    return NULL;
}

static volatile pid_t proxy_pid;
static volatile sig_atomic_t proxy_killed; /* the signal that made the harness kill it */

/* The timeout, or the harness interrupted: the proxy and whatever it
 * started (its own process group) go, so the ends see EOF and EPIPE. */
static void
kill_proxy(int sig)
{
    if (proxy_pid > 0) {
        proxy_killed = sig;
        kill(-proxy_pid, SIGKILL);
    }
}

/* utime and stime (seconds) of process `pid`, all its threads, from
 * /proc/PID/stat; 0 on success. */
static int
proc_cpu(pid_t pid, double *user, double *sys)
{
    char path[64], buf[1024], *p;
    unsigned long long ut, st;
    ssize_t n;
    int fd;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) return -1;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = '\0';
    /* the command name may hold anything; the fields start after its ')' */
    if (!(p = strrchr(buf, ')'))) return -1;
    /* state is field 3, utime 14 and stime 15 */
    if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2) return -1;
    *user = (double)ut / sysconf(_SC_CLK_TCK);
    *sys = (double)st / sysconf(_SC_CLK_TCK);
    return 0;
}

static double
tv_seconds(struct timeval tv)
{
    return tv.tv_sec + tv.tv_usec / 1e6;
}

static int
harness(int argc, char **argv)
{
    const char *transport;
    long long bytes;
    unsigned int timeout = 600;
    int in_b, out_a, ready[2], null, i = 0, failed = 0, readied = 0;
    struct end producer = {0}, consumer = {0};
    pthread_t producer_thread, consumer_thread;
    struct sigaction sa;
    struct rusage ru;
    char line[64];
    size_t len = 0;
    double t0 = 0, setup_user = 0, setup_sys = 0;
    int status;
    pid_t pid;

    if (argc - i >= 2 && strcmp(argv[i], "-t") == 0) {
        timeout = (unsigned int)atoi(argv[i + 1]);
        i += 2;
    }
    if (argc - i < 4 || strcmp(argv[i + 2], "--") != 0) return 2;
    transport = argv[i];
    bytes = atoll(argv[i + 1]);
    argv += i + 3;

    /* everything that is not the proxy's work, before it starts */
    producer.src = make_source();
    producer.bytes = bytes;
    if ((null = open("/dev/null", O_RDWR | O_CLOEXEC)) < 0) die("/dev/null");
    consumer.null = null;
    if (stream_pair(transport, &producer.fd, &in_b) < 0) return 2;
    stream_pair(transport, &out_a, &consumer.fd);
    if (pipe2(ready, O_CLOEXEC) < 0) die("pipe2");
    fflush(stdout);
    fflush(stderr);

    if ((pid = fork()) < 0) die("fork");
    if (pid == 0) {
        setpgid(0, 0);
        /* above every number dup2 is about to take, then into place;
         * dup2 leaves the new descriptors without FD_CLOEXEC */
        int fin = fcntl(in_b, F_DUPFD_CLOEXEC, 10);
        int fout = fcntl(out_a, F_DUPFD_CLOEXEC, 10);
        int fready = fcntl(ready[1], F_DUPFD_CLOEXEC, 10);
        int fnull = fcntl(null, F_DUPFD_CLOEXEC, 10);

        if (fin < 0 || fout < 0 || fready < 0 || fnull < 0) die("fcntl");
        if (dup2(fnull, 0) < 0 || dup2(fready, 1) < 0 ||
            dup2(fin, PROXY_IN) < 0 || dup2(fout, PROXY_OUT) < 0) die("dup2");
        if (close_range(PROXY_OUT + 1, ~0U, 0) < 0) {
            for (int fd = PROXY_OUT + 1; fd < 1024; fd++) close(fd);
        }
        execvp(argv[0], argv);
        perror(argv[0]);
        _exit(127);
    }
    setpgid(pid, pid); /* as the child does: whichever runs first */
    proxy_pid = pid;
    close(in_b);
    close(out_a);
    close(ready[1]);

    signal(SIGPIPE, SIG_IGN);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = kill_proxy;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    alarm(timeout);

    if ((errno = pthread_create(&consumer_thread, NULL, consumer_main, &consumer)) != 0) die("pthread_create");

    /* "ready\n" */
    while (len < sizeof(line) - 1) {
        ssize_t n = read(ready[0], line + len, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (line[len++] == '\n') break;
    }
    line[len] = '\0';
    if (strcmp(line, "ready\n") == 0) {
        readied = 1;
        if (proc_cpu(pid, &setup_user, &setup_sys) < 0) {
            fprintf(stderr, "harness: no /proc/%d/stat: CPU figures include the setup\n", (int)pid);
            setup_user = setup_sys = 0;
        }
        t0 = now();
        if ((errno = pthread_create(&producer_thread, NULL, producer_main, &producer)) != 0) die("pthread_create");
        pthread_join(producer_thread, NULL);
    }
    else {
        if (len > 0 && line[len - 1] == '\n') line[len - 1] = '\0';
        if (len > 0) fprintf(stderr, "harness: the proxy said \"%s\", not \"ready\"\n", line);
        else fprintf(stderr, "harness: the proxy closed its stdout without \"ready\"\n");
        kill(-pid, SIGKILL);
        close(producer.fd);
        failed = 1;
    }
    pthread_join(consumer_thread, NULL);
    while (wait4(pid, &status, 0, &ru) < 0) {
        if (errno != EINTR) die("wait4");
    }
    alarm(0);
    close(ready[0]);

    if (WIFSIGNALED(status)) {
        if (proxy_killed == SIGALRM) fprintf(stderr, "harness: the proxy timed out after %u s\n", timeout);
        else if (proxy_killed) fprintf(stderr, "harness: killed the proxy on signal %d\n", (int)proxy_killed);
        else fprintf(stderr, "harness: the proxy was killed by signal %d\n", WTERMSIG(status));
        failed = 1;
    }
    else if (WEXITSTATUS(status) != 0) {
        fprintf(stderr, "harness: the proxy exited with status %d\n", WEXITSTATUS(status));
        failed = 1;
    }
    if (producer.error) {
        fprintf(stderr, "harness: %s: %s\n", producer.what, strerror(producer.error));
        failed = 1;
    }
    if (consumer.error) {
        fprintf(stderr, "harness: %s: %s\n", consumer.what, strerror(consumer.error));
        failed = 1;
    }
    if (readied && consumer.bytes != bytes) {
        fprintf(stderr, "harness: the consumer got %lld bytes of %lld\n", consumer.bytes, bytes);
        failed = 1;
    }
    printf("%lld %.6f %.6f %.6f %.6f %.6f\n", consumer.bytes, readied ? consumer.t_end - t0 : 0.0,
           tv_seconds(ru.ru_utime) - setup_user, tv_seconds(ru.ru_stime) - setup_sys,
           setup_user, setup_sys);
    return failed;
}

/* ---- proxies for the harness: descriptors 3 -> 4 ------------------- */

static void
say_ready(void)
{
    if (write(1, "ready\n", 6) != 6) die("write ready");
}

static void
splice_proxy(void)
{
    int p[2];
    size_t chunk = make_pipe(p);

    say_ready();
    if (splice_through(PROXY_IN, PROXY_OUT, p, chunk) < 0) die("splice");
    close(PROXY_OUT);
}

/* What a runtime whose descriptors are non-blocking (ruby's are) can do
 * at best: the same splices with SPLICE_F_NONBLOCK on O_NONBLOCK
 * descriptors, and poll(2) before a side that was drained or full. */
static void
splice_nonblock_proxy(void)
{
    int p[2];
    size_t chunk = make_pipe(p);
    int in_first = 0, out_first = 0;

    fcntl(PROXY_IN, F_SETFL, fcntl(PROXY_IN, F_GETFL) | O_NONBLOCK);
    fcntl(PROXY_OUT, F_SETFL, fcntl(PROXY_OUT, F_GETFL) | O_NONBLOCK);
    say_ready();
    for (;;) {
        struct pollfd pfd = {PROXY_IN, POLLIN, 0};
        ssize_t n;

        if (in_first && poll(&pfd, 1, -1) < 0) die("poll");
        n = splice(PROXY_IN, NULL, p[1], NULL, chunk, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n < 0 && errno == EAGAIN) { in_first = 1; continue; }
        if (n < 0) die("splice");
        if (n == 0) break;
        in_first = (size_t)n < chunk;
        while (n > 0) {
            struct pollfd out = {PROXY_OUT, POLLOUT, 0};
            ssize_t m;

            if (out_first && poll(&out, 1, -1) < 0) die("poll");
            m = splice(p[0], NULL, PROXY_OUT, NULL, n, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (m < 0 && errno == EAGAIN) { out_first = 1; continue; }
            if (m < 0) die("splice");
            n -= m;
            out_first = n > 0;
        }
    }
    close(PROXY_OUT);
}

static void
readwrite_proxy(void)
{
    static char buf[CHUNK];
    ssize_t n;

    say_ready();
    while ((n = read(PROXY_IN, buf, sizeof(buf))) > 0) {
        for (ssize_t off = 0; off < n;) {
            ssize_t m = write(PROXY_OUT, buf + off, n - off);
            if (m < 0) die("write");
            off += m;
        }
    }
    if (n < 0) die("read");
    close(PROXY_OUT);
}

#ifdef HAVE_LIBURING
/*
 * One submission per pipeful: splice up to a pipeful socket->pipe, hard
 * linked to pipe->socket (SPLICE_F_NONBLOCK on the pipe side, so a short or
 * empty first half never leaves the second half waiting on the pipe).
 * What the second half left in the pipe is drained before the next one.
 */
static void
uring_proxy(void)
{
    int in = PROXY_IN, out = PROXY_OUT, p[2];
    struct io_uring ring;
    struct io_uring_sqe *sqe;
    struct io_uring_cqe *cqe;
    size_t chunk = make_pipe(p);

    if (io_uring_queue_init(8, &ring, 0) < 0) die("io_uring_queue_init");
    say_ready();
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
    if (argc >= 2 && strcmp(argv[1], "harness") == 0) {
        int r = harness(argc - 2, argv + 2);
        if (r != 2) return r;
    }
    else if (argc >= 2 && strcmp(argv[1], "splice-fds") == 0) { splice_proxy(); return 0; }
    else if (argc >= 2 && strcmp(argv[1], "splice-nonblock-fds") == 0) { splice_nonblock_proxy(); return 0; }
    else if (argc >= 2 && strcmp(argv[1], "readwrite-fds") == 0) { readwrite_proxy(); return 0; }
#ifdef HAVE_LIBURING
    else if (argc >= 2 && strcmp(argv[1], "uring-fds") == 0) { uring_proxy(); return 0; }
#endif
    else if (argc >= 2 && strcmp(argv[1], "consume") == 0) { consume(); return 0; }
    else if (argc >= 4 && strcmp(argv[1], "produce") == 0) { produce(atoi(argv[2]), atoll(argv[3])); return 0; }
    else if (argc >= 4 && strcmp(argv[1], "sendfile") == 0) { sendfile_to(argv[2], atoi(argv[3])); return 0; }
    else if (argc >= 3 && strcmp(argv[1], "receive") == 0) { receive_into(argv[2]); return 0; }
    fprintf(stderr, "usage: %s harness [-t SECONDS] unix|tcp BYTES -- PROXY_COMMAND... |\n"
            "       splice-fds | splice-nonblock-fds | uring-fds | readwrite-fds |\n"
            "       consume | produce PORT BYTES | sendfile FILE PORT | receive FILE\n", argv[0]);
    return 2;
}
