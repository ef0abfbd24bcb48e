/* ctd-probe: small, static test program run inside containers by the test suite.
 * Each subcommand makes one attempt and prints "ok" or the errno name, so tests can assert
 * the precise refusal. Built by the tests with `gcc -static`. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int report(long rc) {
    if (rc < 0) { printf("%s\n", strerrorname_np(errno)); return 1; }
    printf("ok\n");
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2) { fprintf(stderr, "usage: probe CMD [ARGS]\n"); return 2; }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "alloc")) {               /* alloc MB: touch that much memory */
        size_t mb = argc > 2 ? strtoul(argv[2], 0, 10) : 100;
        for (size_t i = 0; i < mb; i++) {
            char *p = malloc(1 << 20);
            if (!p) return report(-1);
            memset(p, 1, 1 << 20);
        }
        printf("ok\n");
        return 0;
    }
    if (!strcmp(cmd, "forkloop")) {            /* forkloop N: fork N sleepers, report how many */
        int n = argc > 2 ? atoi(argv[2]) : 100, made = 0, err = 0;
        for (int i = 0; i < n; i++) {
            pid_t p = fork();
            if (p == 0) { sleep(30); _exit(0); }
            if (p < 0) { err = errno; break; }
            made++;
        }
        printf("%d %s\n", made, err ? strerrorname_np(err) : "ok");
        fflush(stdout);
        kill(0, SIGKILL);  /* the sleepers and us */
        return 0;
    }
    if (!strcmp(cmd, "init_module"))
        return report(syscall(SYS_init_module, "x", 1, ""));
    if (!strcmp(cmd, "finit_module"))
        return report(syscall(SYS_finit_module, 0, "", 0));
    if (!strcmp(cmd, "kexec_load"))
        return report(syscall(SYS_kexec_load, 0, 0, 0, 0));
    if (!strcmp(cmd, "open_by_handle_at")) {
        struct { unsigned int bytes; int type; unsigned char h[8]; } fh = {8, 1, {2, 0, 0, 0, 0, 0, 0, 0}};
        return report(syscall(SYS_open_by_handle_at, AT_FDCWD, &fh, O_RDONLY));
    }
    if (!strcmp(cmd, "keyctl"))
        return report(syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0));
    if (!strcmp(cmd, "add_key"))
        return report(syscall(SYS_add_key, "user", "x", "y", 1, -3));
    if (!strcmp(cmd, "bpf"))
        return report(syscall(SYS_bpf, 0, 0, 0));
    if (!strcmp(cmd, "userfaultfd"))
        return report(syscall(SYS_userfaultfd, 0));
    if (!strcmp(cmd, "perf_event_open"))
        return report(syscall(SYS_perf_event_open, 0, 0, -1, -1, 0));
    if (!strcmp(cmd, "settime")) {
        struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
        return report(clock_settime(CLOCK_REALTIME, &ts));
    }
    if (!strcmp(cmd, "settimeofday")) {
        struct timeval tv; gettimeofday(&tv, 0);
        return report(settimeofday(&tv, 0));
    }
    if (!strcmp(cmd, "mknod_block"))          /* mknod PATH of the host's first disk (8:0 / 253:0) */
        return report(mknod(argc > 2 ? argv[2] : "/tmp/disk", S_IFBLK | 0600, makedev(253, 0)));
    if (!strcmp(cmd, "mount"))                /* mount SRC DST FSTYPE */
        return report(mount(argv[2], argv[3], argv[4], 0, 0));
    if (!strcmp(cmd, "write"))                /* write PATH TEXT */ {
        int fd = open(argv[2], O_WRONLY);
        if (fd < 0) return report(-1);
        return report(write(fd, argv[3], strlen(argv[3])));
    }
    if (!strcmp(cmd, "open"))                 /* open PATH: read-only */
        return report(open(argv[2], O_RDONLY));
    if (!strcmp(cmd, "openw"))                /* openw PATH: for writing */
        return report(open(argv[2], O_WRONLY));
    if (!strcmp(cmd, "kill"))                 /* kill PID SIG */
        return report(kill(atoi(argv[2]), atoi(argv[3])));
    if (!strcmp(cmd, "ptrace"))               /* ptrace PID: attach */
        return report(syscall(SYS_ptrace, 16 /* PTRACE_ATTACH */, atoi(argv[2]), 0, 0));
    if (!strcmp(cmd, "setns"))                /* setns PATH: join the namespace at PATH */ {
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0) return report(-1);
        return report(setns(fd, 0));
    }
    if (!strcmp(cmd, "fds")) {                /* fds: list open fds > 2 and where they point */
        char path[64], target[4096];
        for (int fd = 3; fd < 1024; fd++) {
            snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
            ssize_t n = readlink(path, target, sizeof target - 1);
            if (n > 0) { target[n] = 0; printf("%d %s\n", fd, target); }
        }
        printf("end\n");
        return 0;
    }
    if (!strcmp(cmd, "cwd")) {
        char buf[4096];
        if (!getcwd(buf, sizeof buf)) return report(-1);
        printf("%s\n", buf);
        return 0;
    }
    fprintf(stderr, "probe: unknown command %s\n", cmd);
    return 2;
}
