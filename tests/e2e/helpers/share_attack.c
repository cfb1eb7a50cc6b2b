/* Tries to leave husk's share from inside the guest (issue 26): run by a
 * root process with every capability in a container, on each BASE, a
 * directory on the share (the container's root, a volume, the share itself
 * mounted anew). Outside the share, on the host, the test has put files
 * named husk-secret that hold SECRET: any path, handle or race that reads
 * SECRET or lists husk-secret is an escape.
 *
 *   share-attack SECRET BASE...
 *
 * Prints one line per technique and base ("<technique> <base>: <n>
 * attempts, <m> escapes[, <note>]"), an "ESCAPE ..." line for each escape,
 * and "done" at the end. Built static by the test (tests/e2e/
 * test_isolation.py), so it runs on a busybox rootfs. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char* secret;
static long attempts, escapes, opened;

static void escape(const char* how, const char* detail) {
    ++escapes;
    printf("ESCAPE %s: %s\n", how, detail);
    fflush(stdout);
}

/* Reads what fd holds (a file) or lists it (a directory), looking for the
 * secret or its name. */
static void inspect(int fd, const char* how) {
    ++attempts;
    struct stat st;
    if (fstat(fd, &st) < 0) return;
    if (S_ISDIR(st.st_mode)) {
        int d = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (d < 0) return;
        DIR* dir = fdopendir(d);
        if (!dir) {
            close(d);
            return;
        }
        struct dirent* e;
        while ((e = readdir(dir)))
            if (strcmp(e->d_name, "husk-secret") == 0) escape(how, "lists husk-secret");
        closedir(dir);
        int s = openat(fd, "husk-secret", O_RDONLY | O_CLOEXEC);
        if (s >= 0) {
            inspect(s, how);
            close(s);
        }
        return;
    }
    if (!S_ISREG(st.st_mode)) return;
    char buf[4096];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) return;
    buf[n] = 0;
    if (strstr(buf, secret)) escape(how, "read the secret");
}

static void inspect_path(int dirfd, const char* path, const char* how) {
    int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) fd = openat(dirfd, path, O_PATH | O_CLOEXEC);
    if (fd < 0) {
        ++attempts;
        return;
    }
    inspect(fd, how);
    close(fd);
}

static void report(const char* technique, const char* base, const char* note) {
    printf("%s %s: %ld attempts, %ld escapes%s%s\n", technique, base, attempts, escapes, note ? ", " : "", note ? note : "");
    fflush(stdout);
    attempts = escapes = 0;
}

/* ".." as far as it goes, from the base and from below it. */
static void dotdot(const char* base) {
    int fd = open(base, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    for (int i = 0; i < 16; ++i) {
        int up = openat(fd, "..", O_PATH | O_DIRECTORY | O_CLOEXEC);
        close(fd);
        if (up < 0) return;
        fd = up;
        int r = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (r >= 0) {
            inspect(r, "dotdot");
            close(r);
        }
        inspect_path(fd, "husk-secret", "dotdot");
    }
    close(fd);
    char p[4096];
    snprintf(p, sizeof p, "%s/../../../../../../../../husk-secret", base);
    inspect_path(AT_FDCWD, p, "dotdot");
}

/* Symlinks made on the share, pointing out of it, absolute and relative,
 * followed by the guest (and, were the server to follow them, by it). */
static void symlinks(const char* base) {
    static const char* targets[] = {"/", "/husk-secret", "..", "../husk-secret", "../../husk-secret",
                                    "../../../husk-secret", "../../../../../../../../..", "../../../../../../../../../husk-secret"};
    char link[4096], via[4200];
    for (size_t i = 0; i < sizeof targets / sizeof *targets; ++i) {
        snprintf(link, sizeof link, "%s/.esc-%zu", base, i);
        unlink(link);
        if (symlink(targets[i], link) < 0) {
            ++attempts;  /* (a read-only base: nothing planted) */
            continue;
        }
        inspect_path(AT_FDCWD, link, "symlink");
        snprintf(via, sizeof via, "%s/husk-secret", link);
        inspect_path(AT_FDCWD, via, "symlink");
        snprintf(via, sizeof via, "%s/../husk-secret", link);
        inspect_path(AT_FDCWD, via, "symlink");
        unlink(link);
    }
}

/* Hard links to what lies outside: through a symlink that points out, and
 * across the share's mounts. */
static void hardlinks(const char* base, const char* other) {
    char link[4096], to[4096];
    snprintf(link, sizeof link, "%s/.esc-l", base);
    unlink(link);
    if (symlink("../husk-secret", link) == 0) {
        snprintf(to, sizeof to, "%s/.esc-h", base);
        ++attempts;
        if (linkat(AT_FDCWD, link, AT_FDCWD, to, AT_SYMLINK_FOLLOW) == 0) {
            inspect_path(AT_FDCWD, to, "hardlink");
            unlink(to);
        }
        unlink(link);
    }
    /* A file of another mount of the share: the server must keep each to
     * its own (EXDEV), never join two host filesystems. */
    snprintf(link, sizeof link, "%s/.esc-src", other);
    int fd = open(link, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        close(fd);
        snprintf(to, sizeof to, "%s/.esc-x", base);
        ++attempts;
        if (linkat(AT_FDCWD, link, AT_FDCWD, to, 0) == 0) unlink(to);
        unlink(link);
    }
    /* The agent's and the guest's own files are not the host's either. */
    snprintf(to, sizeof to, "%s/.esc-exe", base);
    ++attempts;
    if (linkat(AT_FDCWD, "/proc/self/exe", AT_FDCWD, to, AT_SYMLINK_FOLLOW) == 0) unlink(to);
}

/* File handles: the share's own, then forged ones (FUSE's are a node id
 * and a generation: every small node id tried, and every byte of a real
 * handle flipped). A handle must open its own share's files or nothing. */
static void handles(const char* base) {
    struct {
        struct file_handle h;
        unsigned char bytes[MAX_HANDLE_SZ];
    } real, forged;
    int mount_id;
    real.h.handle_bytes = MAX_HANDLE_SZ;
    int mfd = open(base, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (mfd < 0) return;
    if (name_to_handle_at(AT_FDCWD, base, &real.h, &mount_id, 0) < 0) {
        char note[128];
        snprintf(note, sizeof note, "no handles (%s)", strerror(errno));
        close(mfd);
        report("handles", base, note);
        return;
    }
    unsigned n = real.h.handle_bytes;
    for (uint64_t node = 0; node < 4096; ++node) {
        for (uint32_t gen = 0; gen < 3; ++gen) {
            /* FUSE's layout (fs/fuse/inode.c, fuse_encode_fh): the node
             * id's high and low halves, then the generation. */
            uint32_t words[3] = {(uint32_t)(node >> 32), (uint32_t)node, gen};
            forged = real;
            memset(forged.h.f_handle, 0, n);
            memcpy(forged.h.f_handle, words, n < sizeof words ? n : sizeof words);
            int fd = open_by_handle_at(mfd, &forged.h, O_RDONLY | O_CLOEXEC);
            if (fd < 0) fd = open_by_handle_at(mfd, &forged.h, O_PATH | O_CLOEXEC);
            ++attempts;
            if (fd >= 0) {
                ++opened;
                inspect(fd, "handle");
                close(fd);
            }
        }
    }
    for (unsigned i = 0; i < n; ++i) {
        for (int bit = 0; bit < 8; ++bit) {
            forged = real;
            forged.h.f_handle[i] ^= (unsigned char)(1u << bit);
            int fd = open_by_handle_at(mfd, &forged.h, O_PATH | O_CLOEXEC);
            ++attempts;
            if (fd >= 0) {
                ++opened;
                inspect(fd, "handle");
                close(fd);
            }
        }
    }
    char note[96];
    snprintf(note, sizeof note, "handle type %d, %u bytes, %ld forged handles opened", real.h.handle_type, n, opened);
    opened = 0;
    close(mfd);
    report("handles", base, note);
}

/* A directory swapped for a symlink out of the share while another process
 * walks through it (the race path-based file servers lost: the server must
 * never follow a link the guest planted, whatever it checked before). */
static void rename_race(const char* base) {
    char dir[4096], a[4100], l[4100], t[4100];
    snprintf(dir, sizeof dir, "%s/.race", base);
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(l, sizeof l, "%s/l", dir);
    snprintf(t, sizeof t, "%s/t", dir);
    mkdir(dir, 0755);
    mkdir(a, 0755);
    unlink(l);
    if (symlink("../../../../../../../..", l) < 0) {
        char note[128];
        ++attempts;
        snprintf(note, sizeof note, "nothing to swap (%s)", strerror(errno));
        report("race", base, note);
        rmdir(a);
        rmdir(dir);
        return;
    }
    int x = open(t, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (x >= 0) close(x);
    pid_t swapper = fork();
    if (swapper == 0) {
        time_t end = time(NULL) + 3;
        int exchange = 1;
        while (time(NULL) < end) {
            if (exchange && syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, l, 2 /* RENAME_EXCHANGE */) == 0) continue;
            exchange = 0;  /* not on this filesystem: the same with two renames */
            if (rename(a, t) == 0) {
                rename(l, a);
                rename(a, l);
                rename(t, a);
            }
        }
        _exit(0);
    }
    time_t end = time(NULL) + 3;
    char p[4200];
    while (time(NULL) < end) {
        snprintf(p, sizeof p, "%s/husk-secret", a);
        inspect_path(AT_FDCWD, p, "race");
        snprintf(p, sizeof p, "%s/../husk-secret", a);
        inspect_path(AT_FDCWD, p, "race");
        inspect_path(AT_FDCWD, a, "race");
    }
    waitpid(swapper, NULL, 0);
    report("race", base, NULL);
    unlink(l);
    rmdir(l);
    unlink(t);
    rmdir(a);
    unlink(a);
    rmdir(dir);
}

int main(int argc, char** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: share-attack SECRET BASE...\n");
        return 2;
    }
    secret = argv[1];
    for (int i = 2; i < argc; ++i) {
        const char* base = argv[i];
        const char* other = argv[i + 1 < argc ? i + 1 : 2];
        dotdot(base);
        report("dotdot", base, NULL);
        symlinks(base);
        report("symlink", base, NULL);
        hardlinks(base, other);
        report("hardlink", base, NULL);
        handles(base);
        rename_race(base);
    }
    printf("done\n");
    return 0;
}
