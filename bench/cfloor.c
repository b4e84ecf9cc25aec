/* The C floor for relay's benchmarks: the bare minimum durable Maildir
 * delivery (open O_EXCL in tmp/, write, fsync, rename into new/, fsync new/).
 * Usage: cfloor MAILDIR COUNT [nofsync|group]  (COUNT messages, one process).
 *   nofsync: no fsync at all.
 *   group:   the same group commit relay's batch does, single-threaded:
 *            write every file in tmp/, one syncfs, rename them all into
 *            new/, one fsync of new/. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void name(char *out, size_t n, const char *dir, const char *sub, const struct timespec *ts, long i) {
    snprintf(out, n, "%s/%s/%ld.%ld.%d.%ld.json", dir, sub, (long)ts->tv_sec, (long)ts->tv_nsec, getpid(), i);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: cfloor MAILDIR COUNT [nofsync|group]\n"); return 64; }
    const char *dir = argv[1];
    long count = atol(argv[2]);
    const char *mode = argc > 3 ? argv[3] : "";
    int sync = strcmp(mode, "nofsync") != 0 && strcmp(mode, "group") != 0;
    int group = strcmp(mode, "group") == 0;
    char body[540];
    memset(body, 'x', sizeof body);
    char newdir[4096];
    snprintf(newdir, sizeof newdir, "%s/new", dir);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    for (long i = 0; i < count; i++) {
        char tmp[4096], dst[4096];
        name(tmp, sizeof tmp, dir, "tmp", &ts, i);
        name(dst, sizeof dst, dir, "new", &ts, i);
        int fd = open(tmp, O_CREAT | O_EXCL | O_WRONLY, 0600);
        if (fd < 0) { perror(tmp); return 74; }
        if (write(fd, body, sizeof body) != (ssize_t)sizeof body) { perror("write"); return 74; }
        if (sync && fsync(fd) != 0) { perror("fsync"); return 74; }
        close(fd);
        if (group) continue;
        if (rename(tmp, dst) != 0) { perror("rename"); return 74; }
        if (sync) {
            int d = open(newdir, O_RDONLY | O_DIRECTORY);
            if (d < 0 || fsync(d) != 0) { perror(newdir); return 74; }
            close(d);
        }
    }
    if (group) {
        int d = open(newdir, O_RDONLY | O_DIRECTORY);
        if (d < 0 || syncfs(d) != 0) { perror("syncfs"); return 74; }
        for (long i = 0; i < count; i++) {
            char tmp[4096], dst[4096];
            name(tmp, sizeof tmp, dir, "tmp", &ts, i);
            name(dst, sizeof dst, dir, "new", &ts, i);
            if (rename(tmp, dst) != 0) { perror("rename"); return 74; }
        }
        if (fsync(d) != 0) { perror(newdir); return 74; }
        close(d);
    }
    return 0;
}
