/*
 * wolfssl_server: a small DTLS 1.2 server linked against wolfSSL (Debian's libwolfssl-dev),
 * a conformance peer for d2tls (src/d2tls/lab/peers.py, WolfSSLServer).
 *
 * It behaves like wolfSSL's example server in DTLS mode: one thread, one UDP socket, one
 * association at a time. It peeks at the next datagram to learn the client's address
 * (discarding anything that is not a handshake record), runs a blocking wolfSSL_accept with
 * wolfSSL's own retransmission timers (RFC 6347 §4.2.4: 1 s initial, doubling up to -t),
 * echoes application data until close_notify, an error or -i seconds of silence, answers
 * close_notify, then serves the next client. Datagrams from other clients that arrive
 * meanwhile are dropped (a real client retransmits its ClientHello).
 *
 * Features: HelloVerifyRequest cookies (wolfSSL's default), ECDHE-ECDSA with AES-128-CCM-8
 * (RFC 7251) and AES-128-GCM (RFC 5289), client certificates required and verified against
 * -A (not required for PSK suites), the extended master secret (RFC 7627), and session-ID
 * resumption from wolfSSL's session cache. PSK (-s) is configured, but Debian's libwolfssl
 * 5.5.4 is built without WOLFSSL_STATIC_PSK, so PSK-AES128-CCM-8 (RFC 6655) cannot be
 * negotiated with it; the server says so at start-up (a wolfSSL built with
 * --enable-psk offers it).
 *
 * Usage: wolfssl_server -c CERT -k KEY -A CA [-a HOST] [-p PORT] [-v required|optional|none]
 *                       [-s IDENTITY:HEX] [-l CIPHERS] [-t MAX_TIMEOUT_S] [-i IDLE_S]
 *                       [-n CONNECTIONS]
 *
 * Output (line-buffered, parsed by the Python wrapper):
 *   wolfssl_server: listening on HOST:PORT
 *   connection from HOST:PORT
 *   handshake done: SUITE, resumed yes|no, session id N bytes
 *   handshake failed: ERROR-STRING (CODE)
 *   closed: REASON
 */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define MAX_PSK 64

static unsigned char psk_key[MAX_PSK];
static unsigned int psk_key_len;
static char psk_identity[129];

static void die(const char *what)
{
    fprintf(stderr, "wolfssl_server: %s\n", what);
    exit(2);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: wolfssl_server -c CERT -k KEY -A CA [-a HOST] [-p PORT]\n"
            "       [-v required|optional|none] [-s IDENTITY:HEX] [-l CIPHERS]\n"
            "       [-t MAX_TIMEOUT_S] [-i IDLE_S] [-n CONNECTIONS]\n");
    exit(2);
}

/* RFC 4279 §5.1: the identity must match; any key of 1..64 bytes. */
static unsigned int psk_callback(WOLFSSL *ssl, const char *identity, unsigned char *key,
                                 unsigned int key_max)
{
    (void)ssl;
    if (identity == NULL || strcmp(identity, psk_identity) != 0 || psk_key_len > key_max)
        return 0;
    memcpy(key, psk_key, psk_key_len);
    return psk_key_len;
}

static void parse_psk(const char *text)
{
    const char *colon = strrchr(text, ':');
    size_t id_len, hex_len, i;
    if (colon == NULL || colon == text)
        die("-s expects IDENTITY:HEX");
    id_len = (size_t)(colon - text);
    if (id_len >= sizeof(psk_identity))
        die("PSK identity too long");
    memcpy(psk_identity, text, id_len);
    psk_identity[id_len] = '\0';
    hex_len = strlen(colon + 1);
    if (hex_len == 0 || hex_len % 2 != 0 || hex_len / 2 > MAX_PSK)
        die("PSK key must be 1..64 bytes of hex");
    for (i = 0; i < hex_len / 2; i++) {
        unsigned int byte;
        if (sscanf(colon + 1 + 2 * i, "%2x", &byte) != 1)
            die("PSK key is not hex");
        psk_key[i] = (unsigned char)byte;
    }
    psk_key_len = (unsigned int)(hex_len / 2);
}

static const char *address_text(const struct sockaddr_in *addr, char *out, size_t size)
{
    char host[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &addr->sin_addr, host, sizeof(host));
    snprintf(out, size, "%s:%u", host, (unsigned)ntohs(addr->sin_port));
    return out;
}

/* Wait for the next client's first handshake record; returns its address. */
static void next_client(int sock, struct sockaddr_in *peer)
{
    unsigned char first[1];
    struct timeval forever = {0, 0};
    /* wolfSSL's blocking DTLS I/O left its retransmission timeout on the socket. */
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &forever, sizeof(forever));
    for (;;) {
        socklen_t len = sizeof(*peer);
        ssize_t n = recvfrom(sock, first, sizeof(first), MSG_PEEK, (struct sockaddr *)peer, &len);
        if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
            continue;
        if (n < 0)
            die("recvfrom failed");
        if (n >= 1 && first[0] == 22 /* handshake */)
            return;
        /* A late alert or data of the previous association: discard it (as the example). */
        len = sizeof(*peer);
        recvfrom(sock, first, sizeof(first), 0, (struct sockaddr *)peer, &len);
    }
}

/* Echo until close_notify, an error or idle seconds without data; returns the reason. */
static const char *echo(WOLFSSL *ssl, int sock, int idle)
{
    char buf[2048];
    for (;;) {
        int n, err;
        if (wolfSSL_pending(ssl) == 0) {
            fd_set fds;
            struct timeval tv = {idle, 0};
            FD_ZERO(&fds);
            FD_SET(sock, &fds);
            n = select(sock + 1, &fds, NULL, NULL, &tv);
            if (n == 0)
                return "idle timeout";
            if (n < 0 && errno != EINTR)
                return "select failed";
            if (n < 0)
                continue;
        }
        n = wolfSSL_read(ssl, buf, (int)sizeof(buf));
        if (n > 0) {
            if (wolfSSL_write(ssl, buf, n) != n)
                return "write failed";
            continue;
        }
        err = wolfSSL_get_error(ssl, n);
        if (err == WOLFSSL_ERROR_ZERO_RETURN)
            return "close_notify";
        if (err == WOLFSSL_ERROR_WANT_READ)
            continue; /* a datagram from another client, dropped */
        return wolfSSL_ERR_reason_error_string((unsigned long)err);
    }
}

static void serve(WOLFSSL_CTX *ctx, int sock, int timeout_max, int idle)
{
    struct sockaddr_in peer;
    char text[64];
    WOLFSSL *ssl;
    int ret, err;

    next_client(sock, &peer);
    printf("connection from %s\n", address_text(&peer, text, sizeof(text)));
    ssl = wolfSSL_new(ctx);
    if (ssl == NULL)
        die("wolfSSL_new failed");
    wolfSSL_set_fd(ssl, sock);
    wolfSSL_dtls_set_peer(ssl, &peer, sizeof(peer));
    wolfSSL_dtls_set_timeout_init(ssl, 1);
    wolfSSL_dtls_set_timeout_max(ssl, timeout_max);
    for (;;) {
        ret = wolfSSL_accept(ssl);
        err = ret == WOLFSSL_SUCCESS ? 0 : wolfSSL_get_error(ssl, ret);
        if (err != WOLFSSL_ERROR_WANT_READ)
            break; /* WANT_READ: a datagram from another client was dropped */
    }
    if (ret != WOLFSSL_SUCCESS) {
        printf("handshake failed: %s (%d)\n", wolfSSL_ERR_reason_error_string((unsigned long)err),
               err);
        wolfSSL_free(ssl);
        return;
    }
    {
        WOLFSSL_SESSION *session = wolfSSL_get_session(ssl);
        unsigned int id_len = 0;
        if (session != NULL)
            wolfSSL_SESSION_get_id(session, &id_len);
        printf("handshake done: %s, resumed %s, session id %u bytes\n",
               wolfSSL_get_cipher_name(ssl), wolfSSL_session_reused(ssl) ? "yes" : "no",
               id_len);
    }
    printf("closed: %s\n", echo(ssl, sock, idle));
    wolfSSL_shutdown(ssl); /* our close_notify (RFC 5246 §7.2.1) */
    wolfSSL_free(ssl);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *cert = NULL, *key = NULL, *ca = NULL;
    const char *verify = "required", *psk = NULL;
    const char *ciphers = NULL;
    int port = 0, timeout_max = 64, idle = 10, connections = -1, opt, sock;
    struct sockaddr_in addr;
    socklen_t addr_len = sizeof(addr);
    WOLFSSL_CTX *ctx;

    while ((opt = getopt(argc, argv, "a:p:c:k:A:v:s:l:t:i:n:")) != -1) {
        switch (opt) {
        case 'a': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': cert = optarg; break;
        case 'k': key = optarg; break;
        case 'A': ca = optarg; break;
        case 'v': verify = optarg; break;
        case 's': psk = optarg; break;
        case 'l': ciphers = optarg; break;
        case 't': timeout_max = atoi(optarg); break;
        case 'i': idle = atoi(optarg); break;
        case 'n': connections = atoi(optarg); break;
        default: usage();
        }
    }
    if (cert == NULL || key == NULL || ca == NULL || timeout_max < 1 || idle < 1)
        usage();
    setvbuf(stdout, NULL, _IOLBF, 0);

    wolfSSL_Init();
    ctx = wolfSSL_CTX_new(wolfDTLSv1_2_server_method());
    if (ctx == NULL)
        die("wolfSSL_CTX_new failed");
    if (wolfSSL_CTX_use_certificate_chain_file(ctx, cert) != WOLFSSL_SUCCESS)
        die("cannot load the certificate chain (-c)");
    if (wolfSSL_CTX_use_PrivateKey_file(ctx, key, WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS)
        die("cannot load the private key (-k)");
    if (wolfSSL_CTX_load_verify_locations(ctx, ca, NULL) != WOLFSSL_SUCCESS)
        die("cannot load the CA (-A)");
    if (strcmp(verify, "required") == 0)
        wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_PEER | WOLFSSL_VERIFY_FAIL_EXCEPT_PSK, NULL);
    else if (strcmp(verify, "optional") == 0)
        wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_PEER, NULL);
    else if (strcmp(verify, "none") == 0)
        wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_NONE, NULL);
    else
        usage();
    if (psk != NULL) {
        parse_psk(psk);
        wolfSSL_CTX_set_psk_server_callback(ctx, psk_callback);
    }
    if (psk != NULL && wolfSSL_CTX_set_cipher_list(ctx, "PSK-AES128-CCM-8") != WOLFSSL_SUCCESS) {
        /* Debian builds libwolfssl with --enable-distro, without WOLFSSL_STATIC_PSK: the
         * plain (non-ephemeral) PSK suites of RFC 4279/6655 are not compiled in. */
        printf("note: PSK-AES128-CCM-8 is not in this libwolfssl build (no WOLFSSL_STATIC_PSK);"
               " the PSK is accepted but no PSK suite can be negotiated\n");
    }
    if (ciphers == NULL)
        ciphers = psk != NULL ? "ECDHE-ECDSA-AES128-CCM-8:ECDHE-ECDSA-AES128-GCM-SHA256:"
                                "PSK-AES128-CCM-8"
                              : "ECDHE-ECDSA-AES128-CCM-8:ECDHE-ECDSA-AES128-GCM-SHA256";
    if (wolfSSL_CTX_set_cipher_list(ctx, ciphers) != WOLFSSL_SUCCESS)
        die("cipher list refused (-l)");

    sock = socket(AF_INET, SOCK_DGRAM, 0);
    if (sock < 0)
        die("socket failed");
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
        die("-a expects an IPv4 address");
    if (bind(sock, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        perror("bind");
        die("cannot bind");
    }
    getsockname(sock, (struct sockaddr *)&addr, &addr_len);
    printf("wolfssl_server: %s (%s), listening on %s:%u\n", LIBWOLFSSL_VERSION_STRING,
           wolfSSL_lib_version(), host, (unsigned)ntohs(addr.sin_port));

    while (connections != 0) {
        serve(ctx, sock, timeout_max, idle);
        if (connections > 0)
            connections--;
    }
    close(sock);
    wolfSSL_CTX_free(ctx);
    wolfSSL_Cleanup();
    return 0;
}
