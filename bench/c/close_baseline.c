/*
 * The physical limit of bench/io_close.rb: N pipe pairs opened with pipe2(2)
 * and closed, by close(2) one at a time ("sync"), or by IORING_OP_CLOSE
 * submitted in batches of B ("uring").  Prints the seconds taken.
 *
 *   close_baseline sync|uring N [B]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double
clock_seconds(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int
main(int argc, char **argv)
{
    long n = argc > 2 ? atol(argv[2]) : 100000;
    int batch = argc > 3 ? atoi(argv[3]) : 100, uring;
    struct io_uring ring;
    double t0, c0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s sync|uring N [B]\n", argv[0]);
        return 2;
    }
    uring = strcmp(argv[1], "uring") == 0;
    if (uring && io_uring_queue_init(2 * batch, &ring, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN) < 0) {
        perror("io_uring_queue_init");
        return 1;
    }
    t0 = clock_seconds(CLOCK_MONOTONIC);
    c0 = clock_seconds(CLOCK_PROCESS_CPUTIME_ID);
    for (long i = 0; i < n; i += batch) {
        int k = (int)(n - i < batch ? n - i : batch);
        for (int j = 0; j < k; j++) {
            int fds[2];
            if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) { perror("pipe2"); return 1; }
            if (uring) {
                io_uring_prep_close(io_uring_get_sqe(&ring), fds[0]);
                io_uring_prep_close(io_uring_get_sqe(&ring), fds[1]);
            }
            else {
                close(fds[0]);
                close(fds[1]);
            }
        }
        if (uring) {
            struct io_uring_cqe *cqe;
            io_uring_submit_and_wait(&ring, 2 * k);
            for (int j = 0; j < 2 * k; j++) {
                if (io_uring_wait_cqe(&ring, &cqe) < 0 || cqe->res < 0) { fprintf(stderr, "close failed\n"); return 1; }
                io_uring_cqe_seen(&ring, cqe);
            }
        }
    }
    printf("%.6f %.6f\n", clock_seconds(CLOCK_MONOTONIC) - t0,
           clock_seconds(CLOCK_PROCESS_CPUTIME_ID) - c0);
    return 0;
}
