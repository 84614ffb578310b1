/* LD_PRELOAD shim for the bench: wrk cannot present a client certificate, so this wraps
 * SSL_CTX_new and loads the certificate chain + key named by MTLS_CERT / MTLS_KEY into every
 * context wrk creates. Built with gcc at bench time (tests/bench/wrk.py); never shipped.
 * OpenSSL types are opaque here so no -dev headers are needed: the symbols resolve from the
 * libssl that wrk itself links. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_method_st SSL_METHOD;
int SSL_CTX_use_certificate_chain_file(SSL_CTX *ctx, const char *file);
int SSL_CTX_use_PrivateKey_file(SSL_CTX *ctx, const char *file, int type);
#define MTLS_FILETYPE_PEM 1

SSL_CTX *SSL_CTX_new(const SSL_METHOD *method) {
    static SSL_CTX *(*real_new)(const SSL_METHOD *) = NULL;
    if (real_new == NULL) {
        real_new = (SSL_CTX * (*)(const SSL_METHOD *)) dlsym(RTLD_NEXT, "SSL_CTX_new");
    }
    SSL_CTX *ctx = real_new(method);
    const char *cert = getenv("MTLS_CERT");
    const char *key = getenv("MTLS_KEY");
    if (ctx != NULL && cert != NULL && key != NULL) {
        if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, key, MTLS_FILETYPE_PEM) != 1) {
            fprintf(stderr, "mtls shim: cannot load the client certificate or key\n");
            abort();
        }
    }
    return ctx;
}
