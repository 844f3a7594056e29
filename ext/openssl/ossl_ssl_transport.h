/*
 * 'OpenSSL for Ruby' project
 * This program is licensed under the same licence as Ruby.
 * (See the file 'COPYING'.)
 */
#if !defined(OSSL_SSL_TRANSPORT_H)
#define OSSL_SSL_TRANSPORT_H

/*
 * The scheduler transport of SSLSocket (ossl_ssl_transport.c): a BIO over
 * staging buffers that ossl_ssl.c fills and flushes between SSL_* calls
 * with the fiber scheduler's hooks.
 */

/* How the BIO serves the next SSL_* call. */
enum ossl_transport_mode {
    /* *_nonblock and #stop: read(2)/write(2) on the descriptor once staged
     * bytes are used up, as the socket BIO does. */
    OSSL_TRANSPORT_DIRECT,
    /* blocking calls: only staged bytes; the caller fills and flushes. */
    OSSL_TRANSPORT_STAGED
};

int ossl_transport_attach(VALUE self, SSL *ssl, VALUE io);
int ossl_transport_p(SSL *ssl);
void ossl_transport_begin(SSL *ssl, enum ossl_transport_mode mode);
void ossl_transport_after(SSL *ssl, VALUE io, int ssl_error, const char *funcname);
int ossl_transport_fill(SSL *ssl, VALUE io, int readahead);
int ossl_transport_flush(SSL *ssl, VALUE io, const char *funcname);
void ossl_transport_reserve(SSL *ssl, VALUE io, const char *funcname);
int ossl_transport_room(SSL *ssl);
void ossl_transport_flush_written(SSL *ssl, VALUE io, int nwritten, const char *funcname);
int ossl_transport_resume_write(SSL *ssl, VALUE io, int num, const char *funcname);
void ossl_transport_forget_write(SSL *ssl);
void ossl_transport_drain(SSL *ssl, VALUE io);
/*
 * `timed_out` raises ossl_ssl.c's IO::TimeoutError for RUBY_IO_READABLE or
 * RUBY_IO_WRITABLE, so that the transport's timeouts read as the socket
 * BIO's waits do.
 */
void Init_ossl_ssl_transport(void (*timed_out)(int events));

#endif /* OSSL_SSL_TRANSPORT_H */
