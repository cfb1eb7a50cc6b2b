// bench/stdio's guest end for the per-stream question (issue 29): what a
// stdio stream of its own, a vsock connection to the host, would move.
// Built static and put in the container's rootfs by bench/stdio.
//   vsock-out PORT relay        read stdin (a pipe), write it to the
//                               connection: the agent's hops without its
//                               framing or its one shared connection (a
//                               per-stream relay)
//   vsock-out PORT exec CMD...  the connection is CMD's stdout: no agent at
//                               all (the container writes to the socket)
// The connection goes to the host (CID 2) port PORT: husk-vsock hands it to
// <state>/vmm/vsock.sock_PORT, where bench/stdio reads it.
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int dial(unsigned port) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a;
    memset(&a, 0, sizeof a);
    a.svm_family = AF_VSOCK;
    a.svm_cid = VMADDR_CID_HOST;
    a.svm_port = port;
    if (s < 0 || connect(s, (struct sockaddr*)&a, sizeof a) < 0) {
        perror("vsock-out: connect");
        exit(1);
    }
    return s;
}

int main(int argc, char** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: vsock-out PORT relay | vsock-out PORT exec CMD...\n");
        return 2;
    }
    int s = dial((unsigned)strtoul(argv[1], NULL, 10));
    if (strcmp(argv[2], "exec") == 0 && argc > 3) {
        dup2(s, 1);
        close(s);
        execvp(argv[3], argv + 3);
        perror("vsock-out: exec");
        return 127;
    }
    // As the agent does: the pipe made 1 MiB (kPipeSize), and what it
    // holds taken in one wakeup (the agent reads it in 32 KiB frames into
    // one buffer and writes that once), here in one read.
    (void)fcntl(0, F_SETPIPE_SZ, 1 << 20);
    static char buf[1 << 20];
    for (;;) {
        ssize_t r = read(0, buf, sizeof buf);
        if (r == 0) break;
        if (r < 0) {
            perror("vsock-out: read");
            return 1;
        }
        for (ssize_t off = 0; off < r;) {
            ssize_t w = write(s, buf + off, (size_t)(r - off));
            if (w < 0) {
                perror("vsock-out: write");
                return 1;
            }
            off += w;
        }
    }
    return 0;
}
