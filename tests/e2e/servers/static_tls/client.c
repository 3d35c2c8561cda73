/* A TLS client statically linked with OpenSSL (no libssl.so in the process): GETs a path over HTTPS
 * with SSL_write/SSL_read and prints the response.
 * Usage: static-tls-client PORT PATH [--wait-stdin]   (waits for a line on stdin before connecting) */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	if (argc > 3 && !strcmp(argv[3], "--wait-stdin")) {
		char line[16];
		if (!fgets(line, sizeof(line), stdin))
			return 2;
	}
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
	inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)))
		return perror("connect"), 1;
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	SSL *ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	if (SSL_connect(ssl) != 1)
		return fprintf(stderr, "handshake failed\n"), 1;
	char request[512];
	int n = snprintf(request, sizeof(request), "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
			 argv[2]);
	if (SSL_write(ssl, request, n) != n)
		return 1;
	char buf[4096];
	while ((n = SSL_read(ssl, buf, sizeof(buf))) > 0)
		fwrite(buf, 1, n, stdout);
	SSL_shutdown(ssl);
	close(fd);
	return 0;
}
