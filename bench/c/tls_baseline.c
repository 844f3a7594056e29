/*
 * The C floor for bench/tls.rb: the same TLS 1.3 (TLS_AES_128_GCM_SHA256,
 * P-256 certificate) workloads with libssl on blocking sockets, one thread
 * per end, the socket BIO (SSL_set_fd) as SSLSocket has without the
 * transport.
 *
 *   tls_baseline bulk unix|tcp BYTES        16 KiB SSL_write, 64 KiB SSL_read
 *   tls_baseline rr unix|tcp PAIRS COUNT    1 KiB request, 1 KiB response
 *   tls_baseline hs tcp COUNT               fresh TCP connection + handshake
 *
 * Prints one line: wall=<s> cpu=<s> (the process's CPU time) bytes=<n>.
 * Build: gcc -O2 bench/c/tls_baseline.c -o /tmp/tls_baseline -lssl -lcrypto -lpthread
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static SSL_CTX *server_ctx, *client_ctx;
static const char *workload;
static long long bulk_bytes;
static long rr_count;

static double
now(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
die(const char *what)
{
    fprintf(stderr, "tls_baseline: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static void
make_contexts(void)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *cert = X509_new();
    X509_NAME *name;

    if (!key || !cert) die("key");
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert), 86400);
    X509_set_pubkey(cert, key);
    name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1, 0);
    X509_set_issuer_name(cert, name);
    if (!X509_sign(cert, key, EVP_sha256())) die("sign");

    server_ctx = SSL_CTX_new(TLS_server_method());
    client_ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX *ctxs[] = {server_ctx, client_ctx};
    for (int i = 0; i < 2; i++) {
        SSL_CTX_set_min_proto_version(ctxs[i], TLS1_3_VERSION);
        SSL_CTX_set_max_proto_version(ctxs[i], TLS1_3_VERSION);
        SSL_CTX_set_ciphersuites(ctxs[i], "TLS_AES_128_GCM_SHA256");
        /* as ruby/openssl sets them */
        SSL_CTX_set_mode(ctxs[i], SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                         SSL_MODE_RELEASE_BUFFERS);
    }
    if (!SSL_CTX_use_certificate(server_ctx, cert) || !SSL_CTX_use_PrivateKey(server_ctx, key))
        die("certificate");
}

static void
write_all(SSL *ssl, const char *buf, int len)
{
    while (len > 0) {
        int n = SSL_write(ssl, buf, len);
        if (n <= 0) die("SSL_write");
        buf += n;
        len -= n;
    }
}

static void
read_exactly(SSL *ssl, char *buf, int len)
{
    while (len > 0) {
        int n = SSL_read(ssl, buf, len);
        if (n <= 0) die("SSL_read");
        buf += n;
        len -= n;
    }
}

struct end {
    int fd;
    int server;
    long long moved;
};

static void *
run_end(void *ptr)
{
    struct end *e = ptr;
    SSL *ssl = SSL_new(e->server ? server_ctx : client_ctx);
    static char buf[65536];
    char msg[1024];

    SSL_set_fd(ssl, e->fd);
    if ((e->server ? SSL_accept(ssl) : SSL_connect(ssl)) <= 0) die("handshake");
    if (strcmp(workload, "bulk") == 0) {
        if (e->server) {
            char *rbuf = malloc(65536);
            while (e->moved < bulk_bytes) {
                int n = SSL_read(ssl, rbuf, 65536);
                if (n <= 0) die("SSL_read");
                e->moved += n;
            }
            free(rbuf);
        }
        else {
            memset(buf, 'x', sizeof(buf));
            while (e->moved < bulk_bytes) {
                long long left = bulk_bytes - e->moved;
                int n = SSL_write(ssl, buf, left < 16384 ? (int)left : 16384);
                if (n <= 0) die("SSL_write");
                e->moved += n;
            }
        }
    }
    else if (strcmp(workload, "rr") == 0) {
        memset(msg, 'r', sizeof(msg));
        for (long i = 0; i < rr_count; i++) {
            if (e->server) {
                read_exactly(ssl, msg, sizeof(msg));
                write_all(ssl, msg, sizeof(msg));
            }
            else {
                write_all(ssl, msg, sizeof(msg));
                read_exactly(ssl, msg, sizeof(msg));
            }
            e->moved += sizeof(msg);
        }
    }
    /* close_notify both ways before closing: a socket closed with unread
     * data (the session tickets) resets the connection */
    SSL_shutdown(ssl);
    {
        char sink[4096];
        while (SSL_read(ssl, sink, sizeof(sink)) > 0)
            ;
    }
    SSL_free(ssl);
    close(e->fd);
    return NULL;
}

static void
connected_pair(int tcp, int listener, int fds[2])
{
    if (!tcp) {
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) < 0) die("socketpair");
        return;
    }
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int one = 1;
    getsockname(listener, (struct sockaddr *)&sa, &len);
    fds[0] = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fds[0], (struct sockaddr *)&sa, len) < 0) die("connect");
    fds[1] = accept(listener, NULL, NULL);
    /* as Ruby's TCPSocket has it: Nagle off for request/response */
    setsockopt(fds[0], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fds[1], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

int
main(int argc, char **argv)
{
    int tcp, listener = -1, pairs = 1;
    long long moved = 0;
    double t0, c0;

    if (argc < 4) die("usage: tls_baseline bulk|rr|hs unix|tcp N [COUNT]");
    workload = argv[1];
    tcp = strcmp(argv[2], "tcp") == 0;
    make_contexts();
    if (tcp) {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        listener = socket(AF_INET, SOCK_STREAM, 0);
        if (bind(listener, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(listener, 128) < 0) die("listen");
    }
    if (strcmp(workload, "bulk") == 0) bulk_bytes = atoll(argv[3]);
    else if (strcmp(workload, "rr") == 0) { pairs = atoi(argv[3]); rr_count = argc > 4 ? atol(argv[4]) : 1000; }
    else rr_count = atol(argv[3]);

    t0 = now(CLOCK_MONOTONIC);
    c0 = now(CLOCK_PROCESS_CPUTIME_ID);
    if (strcmp(workload, "hs") == 0) {
        for (long i = 0; i < rr_count; i++) {
            int fds[2];
            pthread_t th[2];
            struct end ends[2];
            connected_pair(tcp, listener, fds);
            for (int k = 0; k < 2; k++) {
                ends[k] = (struct end){fds[k], k == 1, 0};
                pthread_create(&th[k], NULL, run_end, &ends[k]);
            }
            for (int k = 0; k < 2; k++) pthread_join(th[k], NULL);
        }
        moved = rr_count;
    }
    else {
        pthread_t *th = calloc(pairs * 2, sizeof(pthread_t));
        struct end *ends = calloc(pairs * 2, sizeof(struct end));
        for (int p = 0; p < pairs; p++) {
            int fds[2];
            connected_pair(tcp, listener, fds);
            ends[2 * p] = (struct end){fds[0], 0, 0};
            ends[2 * p + 1] = (struct end){fds[1], 1, 0};
        }
        for (int i = 0; i < pairs * 2; i++) pthread_create(&th[i], NULL, run_end, &ends[i]);
        for (int i = 0; i < pairs * 2; i++) pthread_join(th[i], NULL);
        for (int i = 0; i < pairs * 2; i += 2) moved += ends[i + 1].moved;
    }
    printf("wall=%.6f cpu=%.6f bytes=%lld\n", now(CLOCK_MONOTONIC) - t0,
           now(CLOCK_PROCESS_CPUTIME_ID) - c0, moved);
    return 0;
}
