/* The C floors for relay's benchmarks.
 * Delivery: the bare minimum durable Maildir delivery (open O_EXCL in tmp/,
 * write, fsync, rename into new/, fsync new/).
 * Usage: cfloor MAILDIR COUNT [nofsync|group]  (COUNT messages, one process).
 *   nofsync: no fsync at all.
 *   group:   the same group commit relay's batch does, single-threaded:
 *            write every file in tmp/, one syncfs, rename them all into
 *            new/, one fsync of new/.
 * Claim:   cfloor MAILDIR COUNT claim  (COUNT messages, one process): the
 *          bare minimum durable at-most-once consume of the oldest message
 *          in new/ (list new/, rename the smallest name into cur/, fsync
 *          cur/, read the file, unlink it, fsync cur/ again), per message.
 *          The same work in two processes, as `relay recv` then `relay ack`:
 *          cfloor MAILDIR 1 take  (list, rename, fsync cur/, read; prints
 *          the file's name on a line of its own, then the file) and
 *          cfloor MAILDIR NAME remove  (unlink cur/NAME, fsync cur/). */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void name(char *out, size_t n, const char *dir, const char *sub, const struct timespec *ts, long i) {
    snprintf(out, n, "%s/%s/%ld.%ld.%d.%ld.json", dir, sub, (long)ts->tv_sec, (long)ts->tv_nsec, getpid(), i);
}

static int sync_path(const char *path) {
    int d = open(path, O_RDONLY | O_DIRECTORY);
    if (d < 0 || fsync(d) != 0) { perror(path); return -1; }
    close(d);
    return 0;
}

/* Removes cur/NAME of MAILDIR, durably. */
static int remove_one(const char *dir, const char *name) {
    char curdir[4096], to[4096];
    snprintf(curdir, sizeof curdir, "%s/cur", dir);
    snprintf(to, sizeof to, "%s/%s", curdir, name);
    if (unlink(to) != 0) { perror("unlink"); return 74; }
    return sync_path(curdir) != 0 ? 74 : 0;
}

/* Claims and reads the oldest message of MAILDIR/new, durably, and then
 * (remove) removes it; else prints its name first. */
static int claim_one(const char *dir, int remove) {
    char newdir[4096], curdir[4096], best[256] = "", from[4096], to[4096], buf[65536];
    snprintf(newdir, sizeof newdir, "%s/new", dir);
    snprintf(curdir, sizeof curdir, "%s/cur", dir);
    DIR *d = opendir(newdir);
    if (!d) { perror(newdir); return 74; }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (!best[0] || strcmp(e->d_name, best) < 0) snprintf(best, sizeof best, "%s", e->d_name);
    }
    closedir(d);
    if (!best[0]) { fprintf(stderr, "cfloor: %s is empty\n", newdir); return 66; }
    snprintf(from, sizeof from, "%s/%s", newdir, best);
    snprintf(to, sizeof to, "%s/%s", curdir, best);
    if (rename(from, to) != 0) { perror("rename"); return 74; }
    if (sync_path(curdir) != 0) return 74;
    int fd = open(to, O_RDONLY);
    if (fd < 0) { perror(to); return 74; }
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    if (n < 0) { perror("read"); return 74; }
    if (!remove && printf("%s\n", best) < 0) { perror("printf"); return 74; }
    fflush(stdout);
    if (write(1, buf, (size_t)n) != n) { perror("write"); return 74; }
    return remove ? remove_one(dir, best) : 0;
}

int main(int argc, char **argv) {
    int claim = argc > 3 && strcmp(argv[3], "claim") == 0;
    if (claim || (argc > 3 && strcmp(argv[3], "take") == 0)) {
        for (long i = 0; i < atol(argv[2]); i++) {
            int rc = claim_one(argv[1], claim);
            if (rc) return rc;
        }
        return 0;
    }
    if (argc > 3 && strcmp(argv[3], "remove") == 0) return remove_one(argv[1], argv[2]);
    if (argc < 3) { fprintf(stderr, "usage: cfloor MAILDIR COUNT [nofsync|group|claim|take], cfloor MAILDIR NAME remove\n"); return 64; }
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
