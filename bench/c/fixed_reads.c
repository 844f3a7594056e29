/*
 * The kernel's side of registered buffers, in C: random O_DIRECT reads of
 * one block size, DEPTH in flight on one io_uring, into one arena that is
 * either registered (IORING_OP_READ_FIXED) or not (IORING_OP_READ).
 *
 *   fixed_reads FILE BLOCK OPS DEPTH fixed|plain
 *
 * Prints "seconds cpu_seconds ops" (the process's user + system CPU over
 * the reads).  Offsets come from a fixed LCG: every run and mode reads the
 * same blocks.  bench/buffers.rb runs it next to the Ruby contenders.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <liburing.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double
now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double
cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

int
main(int argc, char **argv)
{
    struct io_uring ring;
    struct stat st;
    uint64_t seed = 12345, blocks;
    long block, ops, depth, submitted = 0, done = 0, i;
    int fixed, fd, ret;
    char *arena;
    double t0, c0;

    if (argc != 6) {
        fprintf(stderr, "usage: %s FILE BLOCK OPS DEPTH fixed|plain\n", argv[0]);
        return 2;
    }
    block = atol(argv[2]);
    ops = atol(argv[3]);
    depth = atol(argv[4]);
    fixed = strcmp(argv[5], "fixed") == 0;
    fd = open(argv[1], O_RDONLY | O_DIRECT);
    if (fd < 0 || fstat(fd, &st) < 0) { perror(argv[1]); return 1; }
    blocks = st.st_size / block;
    arena = mmap(NULL, block * depth, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (arena == MAP_FAILED) { perror("mmap"); return 1; }
    memset(arena, 0, block * depth);
    if ((ret = io_uring_queue_init(256, &ring, 0)) < 0) { fprintf(stderr, "io_uring: %s\n", strerror(-ret)); return 1; }
    if (fixed) {
        struct iovec iov = {arena, (size_t)(block * depth)};
        if ((ret = io_uring_register_buffers(&ring, &iov, 1)) < 0) {
            fprintf(stderr, "register: %s\n", strerror(-ret));
            return 1;
        }
    }

    t0 = now();
    c0 = cpu();
    for (i = 0; i < depth && submitted < ops; i++, submitted++) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        if (fixed) io_uring_prep_read_fixed(sqe, fd, arena + i * block, block, (seed >> 33) % blocks * block, 0);
        else io_uring_prep_read(sqe, fd, arena + i * block, block, (seed >> 33) % blocks * block);
        io_uring_sqe_set_data64(sqe, i);
    }
    while (done < ops) {
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;

        io_uring_submit_and_wait(&ring, 1);
        io_uring_for_each_cqe(&ring, head, cqe) {
            long slot = (long)io_uring_cqe_get_data64(cqe);
            if (cqe->res != block) { fprintf(stderr, "read: %d\n", cqe->res); return 1; }
            n++;
            done++;
            if (submitted < ops) {
                struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
                seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
                if (fixed) io_uring_prep_read_fixed(sqe, fd, arena + slot * block, block, (seed >> 33) % blocks * block, 0);
                else io_uring_prep_read(sqe, fd, arena + slot * block, block, (seed >> 33) % blocks * block);
                io_uring_sqe_set_data64(sqe, slot);
                submitted++;
            }
        }
        io_uring_cq_advance(&ring, n);
    }
    printf("%f %f %ld\n", now() - t0, cpu() - c0, done);
    return 0;
}
