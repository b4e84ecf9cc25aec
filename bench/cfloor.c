/* The C floor for relay's benchmarks: the bare minimum durable Maildir
 * delivery (open O_EXCL in tmp/, write, fsync, rename into new/, fsync new/).
 * Usage: cfloor MAILDIR COUNT [nofsync]  (COUNT messages, one process). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: cfloor MAILDIR COUNT [nofsync]\n"); return 64; }
    const char *dir = argv[1];
    long count = atol(argv[2]);
    int sync = !(argc > 3 && strcmp(argv[3], "nofsync") == 0);
    char body[540];
    memset(body, 'x', sizeof body);
    char newdir[4096];
    snprintf(newdir, sizeof newdir, "%s/new", dir);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    for (long i = 0; i < count; i++) {
        char tmp[4096], dst[4096];
        snprintf(tmp, sizeof tmp, "%s/tmp/%ld.%ld.%d.%ld.json", dir, (long)ts.tv_sec, (long)ts.tv_nsec, getpid(), i);
        snprintf(dst, sizeof dst, "%s/new/%ld.%ld.%d.%ld.json", dir, (long)ts.tv_sec, (long)ts.tv_nsec, getpid(), i);
        int fd = open(tmp, O_CREAT | O_EXCL | O_WRONLY, 0600);
        if (fd < 0) { perror(tmp); return 74; }
        if (write(fd, body, sizeof body) != (ssize_t)sizeof body) { perror("write"); return 74; }
        if (sync && fsync(fd) != 0) { perror("fsync"); return 74; }
        close(fd);
        if (rename(tmp, dst) != 0) { perror("rename"); return 74; }
        if (sync) {
            int d = open(newdir, O_RDONLY | O_DIRECTORY);
            if (d < 0 || fsync(d) != 0) { perror(newdir); return 74; }
            close(d);
        }
    }
    return 0;
}
