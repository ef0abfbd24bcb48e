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
#include <sys/resource.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/if_ether.h>
#include <netpacket/packet.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <dirent.h>
#include <sys/ioctl.h>
#include <sys/timex.h>
#include <linux/nsfs.h>
#include <netinet/in.h>
#include <netinet/icmp6.h>
#include <poll.h>
#include <linux/fuse.h>

static int report(long rc) {
    if (rc < 0) { printf("%s\n", strerrorname_np(errno)); return 1; }
    printf("ok\n");
    return 0;
}


/* ---- subcommands of the tenant-isolation escape suite (tests/security) ---- */

static int is_host_code(const char *pid) {
    /* A process of ctd's running host code in the container's pid namespace: the exec helper's
     * child between fork and execve (comm inherited from the spawner, or non-dumpable). */
    char path[300], comm[64] = "", target[256];
    snprintf(path, sizeof path, "/proc/%s/comm", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, comm, sizeof comm - 1);
    close(fd);
    if (n > 0) comm[n] = 0;
    if (!strncmp(comm, "ctd", 3) || !strncmp(comm, "python", 6)) return 1;
    snprintf(path, sizeof path, "/proc/%s/exe", pid);
    return readlink(path, target, sizeof target) < 0 && errno == EACCES;
}

static long errcount[134];

static void tally(int err) { if (err > 0 && err < 134) errcount[err]++; }

static int exe_race(double seconds, unsigned long host_ino) {
    /* The CVE-2019-5736 race, from inside: for every process caught running host code, try to
     * reach the host binary through /proc/PID/exe (O_PATH, then O_WRONLY, then a re-open of the
     * O_PATH fd for writing) and to steal its fds with pidfd_getfd. Never writes anything. */
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long scans = 0, seen = 0, exe_path = 0, exe_host = 0, reopen_w = 0, exe_w = 0, getfd = 0, getfd_sock = 0;
    char self[32], path[300], fdpath[64];
    snprintf(self, sizeof self, "%d", getpid());
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 > seconds) break;
        scans++;
        DIR *d = opendir("/proc");
        if (!d) return report(-1);
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] < '1' || e->d_name[0] > '9' || !strcmp(e->d_name, self)) continue;
            if (!is_host_code(e->d_name)) continue;
            seen++;
            snprintf(path, sizeof path, "/proc/%s/exe", e->d_name);
            int fd = open(path, O_PATH | O_CLOEXEC);
            if (fd >= 0) {
                struct stat st;
                exe_path++;
                if (fstat(fd, &st) == 0 && st.st_ino == host_ino) exe_host++;
                snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", fd);
                int w = open(fdpath, O_WRONLY | O_CLOEXEC);
                if (w >= 0) { reopen_w++; close(w); } else tally(errno);
                close(fd);
            } else tally(errno);
            int w = open(path, O_WRONLY | O_CLOEXEC);
            if (w >= 0) { exe_w++; close(w); } else tally(errno);
            int pidfd = syscall(SYS_pidfd_open, atoi(e->d_name), 0);
            if (pidfd >= 0) {
                for (int target = 3; target < 16; target++) {
                    int got = syscall(SYS_pidfd_getfd, pidfd, target, 0);
                    if (got >= 0) {
                        struct stat st;
                        getfd++;
                        if (fstat(got, &st) == 0 && S_ISSOCK(st.st_mode)) getfd_sock++;
                        close(got);
                    } else if (errno != EBADF) tally(errno);
                }
                close(pidfd);
            } else tally(errno);
        }
        closedir(d);
    }
    printf("scans %ld\nseen %ld\nexe_path %ld\nexe_host %ld\nreopen_w %ld\nexe_w %ld\ngetfd %ld\ngetfd_sock %ld\n",
           scans, seen, exe_path, exe_host, reopen_w, exe_w, getfd, getfd_sock);
    for (int i = 1; i < 134; i++)
        if (errcount[i]) printf("errno %s %ld\n", strerrorname_np(i), errcount[i]);
    return 0;
}

static int security_cmd(int argc, char **argv) {
    const char *cmd = argv[1];
    if (!strcmp(cmd, "mknod_dev")) {         /* mknod_dev PATH b|c MAJOR MINOR */
        if (argc < 6) return 2;
        mode_t type = argv[3][0] == 'b' ? S_IFBLK : S_IFCHR;
        return report(mknod(argv[2], type | 0600, makedev(atoi(argv[4]), atoi(argv[5]))));
    }
    if (!strcmp(cmd, "read")) {              /* read PATH [N]: open read-only and read N bytes */
        char buf[4096];
        size_t n = argc > 3 ? strtoul(argv[3], 0, 10) : 1;
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0) return report(-1);
        return report(read(fd, buf, n > sizeof buf ? sizeof buf : n));
    }
    if (!strcmp(cmd, "cat")) {               /* cat PATH: the first 4 KiB, or the errno name */
        char buf[4097];
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0) return report(-1);
        ssize_t n = read(fd, buf, 4096);
        if (n < 0) return report(-1);
        buf[n] = 0;
        printf("%s", buf);
        return 0;
    }
    if (!strcmp(cmd, "delete_module"))
        return report(syscall(SYS_delete_module, "ctd_no_such_module", O_NONBLOCK));
    if (!strcmp(cmd, "kexec_file_load"))
        return report(syscall(SYS_kexec_file_load, -1, -1, 0, "", 0x4 /* KEXEC_FILE_NO_INITRAMFS */));
    if (!strcmp(cmd, "request_key"))
        return report(syscall(SYS_request_key, "user", "ctd-probe", NULL, 0));
    if (!strcmp(cmd, "adjtimex")) {          /* read-only query (modes 0): denied all the same */
        struct timex tx = {0};
        return report(adjtimex(&tx));
    }
    if (!strcmp(cmd, "unshare")) {           /* unshare HEXFLAGS */
        return report(unshare(strtol(argv[2], 0, 16)));
    }
    if (!strcmp(cmd, "ns_parent") || !strcmp(cmd, "ns_owner")) {  /* ns_parent|ns_owner PATH */
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0) return report(-1);
        int up = ioctl(fd, !strcmp(cmd, "ns_parent") ? NS_GET_PARENT : NS_GET_USERNS);
        if (up < 0) return report(-1);
        struct stat st;
        fstat(up, &st);
        printf("ok %lu\n", (unsigned long)st.st_ino);  /* the inode names the namespace reached */
        return 0;
    }
    if (!strcmp(cmd, "nsino")) {             /* nsino PATH: inode number of a namespace file */
        struct stat st;
        if (stat(argv[2], &st) < 0) return report(-1);
        printf("%lu\n", (unsigned long)st.st_ino);
        return 0;
    }
    if (!strcmp(cmd, "pidfd_setns")) {       /* pidfd_setns PID: join all its namespaces */
        int pidfd = syscall(SYS_pidfd_open, atoi(argv[2]), 0);
        if (pidfd < 0) return report(-1);
        return report(setns(pidfd, CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC));
    }
    if (!strcmp(cmd, "pidfd_getfd")) {       /* pidfd_getfd PID FD: take a copy of another process' fd */
        int pidfd = syscall(SYS_pidfd_open, atoi(argv[2]), 0);
        if (pidfd < 0) return report(-1);
        int got = syscall(SYS_pidfd_getfd, pidfd, atoi(argv[3]), 0);
        if (got >= 0) close(got);
        return report(got);
    }
    if (!strcmp(cmd, "mountd")) {            /* mountd SRC DST FSTYPE DATA [HEXFLAGS]: mount with options */
        if (argc < 6) return 2;
        return report(mount(argv[2], argv[3], argv[4], argc > 6 ? strtoul(argv[6], 0, 16) : 0, argv[5]));
    }
    if (!strcmp(cmd, "forkhold")) {          /* forkhold N SECONDS: fork up to N sleepers, hold them, end them */
        int n = atoi(argv[2]), made = 0, err = 0;
        for (int i = 0; i < n; i++) {
            pid_t p = fork();
            if (p == 0) { sleep(3600); _exit(0); }
            if (p < 0) { err = errno; break; }
            made++;
        }
        printf("%d %s\n", made, err ? strerrorname_np(err) : "ok");
        sleep(atoi(argv[3]));
        signal(SIGTERM, SIG_IGN);
        kill(0, SIGTERM);  /* the sleepers, not us */
        while (wait(NULL) > 0) {}
        return 0;
    }
    if (!strcmp(cmd, "openhold")) {          /* openhold PATH N SECONDS: open PATH N times (read 1 byte each), hold */
        struct rlimit rl;
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        int n = atoi(argv[3]), made = 0, err = 0;
        char c;
        for (int i = 0; i < n; i++) {
            int fd = open(argv[2], O_RDONLY);
            if (fd < 0 || read(fd, &c, 1) < 0) { err = errno; break; }
            made++;
        }
        printf("%d %s\n", made, err ? strerrorname_np(err) : "ok");
        sleep(atoi(argv[4]));
        return 0;
    }
    if (!strcmp(cmd, "inotifyhold")) {       /* inotifyhold N SECONDS: make up to N inotify instances, hold them */
        int n = atoi(argv[2]), made = 0, err = 0;
        for (int i = 0; i < n; i++) {
            if (syscall(SYS_inotify_init1, 0) < 0) { err = errno; break; }
            made++;
        }
        printf("%d %s\n", made, err ? strerrorname_np(err) : "ok");
        sleep(atoi(argv[3]));
        return 0;
    }
    if (!strcmp(cmd, "ptyhold")) {           /* ptyhold N SECONDS: open up to N ptys, hold them, report */
        int n = atoi(argv[2]), made = 0, err = 0;
        for (int i = 0; i < n; i++) {
            if (open("/dev/ptmx", O_RDWR | O_NOCTTY) < 0) { err = errno; break; }
            made++;
        }
        printf("%d %s\n", made, err ? strerrorname_np(err) : "ok");
        sleep(atoi(argv[3]));
        return 0;
    }
    if (!strcmp(cmd, "io_uring_setup")) {    /* a one-entry ring: its fd, or the errno name */
        unsigned char params[120] = {0};      /* struct io_uring_params, zeroed */
        return report(syscall(425 /* io_uring_setup */, 1, params));
    }
    if (!strcmp(cmd, "io_uring_enter"))       /* on no ring: EBADF where io_uring is allowed */
        return report(syscall(426 /* io_uring_enter */, -1, 0, 0, 0, NULL, 0));
    if (!strcmp(cmd, "io_uring_register"))
        return report(syscall(427 /* io_uring_register */, -1, 0, NULL, 0));
    if (!strcmp(cmd, "exe_race"))            /* exe_race SECONDS HOST_INODE */
        return exe_race(atof(argv[2]), strtoul(argv[3], 0, 10));
    return -1;
}

/* --- features (tests/host/test_features.py) ------------------------------------------- */
#define PROBE_IFF_TUN 0x0001
#define PROBE_IFF_NO_PI 0x1000
#define PROBE_TUNSETIFF _IOW('T', 202, int)

static int tun_open(const char *name) {          /* a tun interface NAME, its fd; -1 with errno */
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = PROBE_IFF_TUN | PROBE_IFF_NO_PI;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, PROBE_TUNSETIFF, &ifr) < 0) { int e = errno; close(fd); errno = e; return -1; }
    return fd;
}

/* tunrelay IFNAME PEER PORT SECONDS: a one-tunnel VPN. Packets the kernel routes into IFNAME go
 * to PEER:PORT over UDP; datagrams arriving on PORT go into IFNAME. */
static int tunrelay(const char *ifname, const char *peer, int port, int seconds) {
    int tun = tun_open(ifname);
    if (tun < 0) return report(-1);
    int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(port)}, to = me;
    if (udp < 0 || bind(udp, (struct sockaddr *)&me, sizeof me) < 0) return report(-1);
    if (inet_pton(AF_INET, peer, &to.sin_addr) != 1) { fprintf(stderr, "bad peer %s\n", peer); return 2; }
    printf("ready\n");
    time_t end = time(NULL) + seconds;
    char buf[65536];
    struct pollfd fds[2] = {{.fd = tun, .events = POLLIN}, {.fd = udp, .events = POLLIN}};
    while (time(NULL) < end) {
        if (poll(fds, 2, 200) <= 0) continue;
        if (fds[0].revents & POLLIN) {
            ssize_t n = read(tun, buf, sizeof buf);
            if (n > 0) sendto(udp, buf, n, 0, (struct sockaddr *)&to, sizeof to);
        }
        if (fds[1].revents & POLLIN) {
            ssize_t n = recv(udp, buf, sizeof buf, 0);
            if (n > 0 && write(tun, buf, n) < 0) perror("write tun");
        }
    }
    return 0;
}

/* fuse-hello DIR SECONDS: mount a one-file FUSE filesystem on DIR (DIR/hello holds FUSE_TEXT)
 * straight through /dev/fuse, and serve it until it is unmounted or SECONDS pass. */
#define FUSE_TEXT "hello from fuse\n"

static void fuse_attr_of(uint64_t ino, struct fuse_attr *a) {
    memset(a, 0, sizeof *a);
    a->ino = ino;
    a->nlink = ino == 1 ? 2 : 1;
    a->mode = ino == 1 ? (S_IFDIR | 0755) : (S_IFREG | 0444);
    a->size = ino == 1 ? 0 : strlen(FUSE_TEXT);
    a->blksize = 4096;
}

static void fuse_reply(int fd, uint64_t unique, int error, const void *data, size_t len) {
    char out[sizeof(struct fuse_out_header) + 4096];
    struct fuse_out_header *h = (struct fuse_out_header *)out;
    if (len > 4096) len = 4096;
    h->len = sizeof *h + (error ? 0 : len);
    h->error = error;
    h->unique = unique;
    if (!error && len) memcpy(out + sizeof *h, data, len);
    if (write(fd, out, h->len) < 0 && errno != ENOENT) perror("fuse reply");
}

static int fuse_hello(const char *dir, int seconds) {
    int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd < 0) return report(-1);
    char opts[128];
    snprintf(opts, sizeof opts, "fd=%d,rootmode=40000,user_id=0,group_id=0", fd);
    if (mount("probe", dir, "fuse.probe", MS_NOSUID | MS_NODEV, opts) < 0) return report(-1);
    printf("mounted\n");
    static char buf[FUSE_MIN_READ_BUFFER + 65536];
    time_t end = time(NULL) + seconds;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (time(NULL) < end) {
        if (poll(&p, 1, 200) <= 0) continue;
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0) { if (errno == ENODEV) return 0; if (errno == EINTR || errno == ENOENT) continue; return report(-1); }
        struct fuse_in_header *in = (struct fuse_in_header *)buf;
        void *arg = buf + sizeof *in;
        switch (in->opcode) {
        case FUSE_INIT: {
            struct fuse_init_in *ii = arg;
            struct fuse_init_out o;
            memset(&o, 0, sizeof o);
            o.major = FUSE_KERNEL_VERSION;
            o.minor = ii->minor < FUSE_KERNEL_MINOR_VERSION ? ii->minor : FUSE_KERNEL_MINOR_VERSION;
            o.max_readahead = ii->max_readahead;
            o.max_write = 4096;
            fuse_reply(fd, in->unique, 0, &o, sizeof o);
            break;
        }
        case FUSE_GETATTR: {
            struct fuse_attr_out o;
            memset(&o, 0, sizeof o);
            fuse_attr_of(in->nodeid, &o.attr);
            fuse_reply(fd, in->unique, 0, &o, sizeof o);
            break;
        }
        case FUSE_LOOKUP: {
            if (in->nodeid != 1 || strcmp((char *)arg, "hello")) { fuse_reply(fd, in->unique, -ENOENT, 0, 0); break; }
            struct fuse_entry_out o;
            memset(&o, 0, sizeof o);
            o.nodeid = 2;
            o.generation = 1;
            fuse_attr_of(2, &o.attr);
            fuse_reply(fd, in->unique, 0, &o, sizeof o);
            break;
        }
        case FUSE_OPEN: case FUSE_OPENDIR: {
            struct fuse_open_out o;
            memset(&o, 0, sizeof o);
            fuse_reply(fd, in->unique, 0, &o, sizeof o);
            break;
        }
        case FUSE_READ: {
            struct fuse_read_in *r = arg;
            size_t len = strlen(FUSE_TEXT), off = r->offset < len ? r->offset : len;
            size_t count = len - off < r->size ? len - off : r->size;
            fuse_reply(fd, in->unique, 0, FUSE_TEXT + off, count);
            break;
        }
        case FUSE_RELEASE: case FUSE_RELEASEDIR: case FUSE_FLUSH:
            fuse_reply(fd, in->unique, 0, 0, 0);
            break;
        case FUSE_FORGET: case FUSE_BATCH_FORGET:
            break;
        case FUSE_DESTROY:
            fuse_reply(fd, in->unique, 0, 0, 0);
            return 0;
        default:
            fuse_reply(fd, in->unique, -ENOSYS, 0, 0);
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2) { fprintf(stderr, "usage: probe CMD [ARGS]\n"); return 2; }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "tun-open")) {            /* tun-open: make a tun interface (then let it go) */
        int fd = tun_open("probetun0");
        if (fd >= 0) close(fd);
        return report(fd);
    }
    if (!strcmp(cmd, "tunrelay") && argc > 5)
        return tunrelay(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]));
    if (!strcmp(cmd, "fuse-open"))             /* fuse-open: can /dev/fuse be opened? */
        return report(open("/dev/fuse", O_RDWR | O_CLOEXEC));
    if (!strcmp(cmd, "fuse-hello") && argc > 3)
        return fuse_hello(argv[2], atoi(argv[3]));
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
    if (!strcmp(cmd, "opendev"))              /* opendev PATH: read-write, never a controlling tty, never blocking */
        return report(open(argv[2], O_RDWR | O_NOCTTY | O_NONBLOCK));
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
    if (!strcmp(cmd, "arpspoof")) {           /* arpspoof IFACE CLAIMED_IP TARGET_IP: raw gratuitous ARP reply */
        int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ARP));
        if (fd < 0) return report(-1);
        struct ifreq ifr = {0};
        strncpy(ifr.ifr_name, argv[2], IFNAMSIZ - 1);
        if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) return report(-1);
        unsigned char frame[42] = {0};
        memset(frame, 0xff, 6);                                  /* to everyone */
        memcpy(frame + 6, ifr.ifr_hwaddr.sa_data, 6);
        frame[12] = 0x08; frame[13] = 0x06;                      /* ARP */
        struct ether_arp *arp = (struct ether_arp *)(frame + 14);
        arp->arp_hrd = htons(ARPHRD_ETHER); arp->arp_pro = htons(ETH_P_IP);
        arp->arp_hln = 6; arp->arp_pln = 4; arp->arp_op = htons(ARPOP_REPLY);
        memcpy(arp->arp_sha, ifr.ifr_hwaddr.sa_data, 6);
        inet_pton(AF_INET, argv[3], arp->arp_spa);               /* the address we claim */
        memset(arp->arp_tha, 0xff, 6);
        inet_pton(AF_INET, argv[4], arp->arp_tpa);
        if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0) return report(-1);
        struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_ifindex = ifr.ifr_ifindex, .sll_halen = 6};
        memset(to.sll_addr, 0xff, 6);
        for (int i = 0; i < 3; i++)
            if (sendto(fd, frame, sizeof frame, 0, (struct sockaddr *)&to, sizeof to) < 0) return report(-1);
        printf("sent\n");
        return 0;
    }
    if (!strcmp(cmd, "na6spoof")) {           /* na6spoof IFACE CLAIMED_IP6: unsolicited NA claiming it, to all nodes */
        int fd = socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6);
        if (fd < 0) return report(-1);
        int hops = 255;                                          /* NDP is only taken from hop limit 255 */
        setsockopt(fd, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, &hops, sizeof hops);
        if (setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, argv[2], strlen(argv[2])) < 0) return report(-1);
        struct ifreq ifr = {0};
        strncpy(ifr.ifr_name, argv[2], IFNAMSIZ - 1);
        if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) return report(-1);
        unsigned char msg[32] = {0};
        struct nd_neighbor_advert *na = (struct nd_neighbor_advert *)msg;
        na->nd_na_type = ND_NEIGHBOR_ADVERT;
        na->nd_na_flags_reserved = ND_NA_FLAG_OVERRIDE;          /* replace whatever the host knows */
        if (inet_pton(AF_INET6, argv[3], &na->nd_na_target) != 1) return report(-1);
        msg[24] = ND_OPT_TARGET_LINKADDR; msg[25] = 1;           /* "that address is at my MAC" */
        memcpy(msg + 26, ifr.ifr_hwaddr.sa_data, 6);
        struct sockaddr_in6 to = {.sin6_family = AF_INET6, .sin6_scope_id = if_nametoindex(argv[2])};
        inet_pton(AF_INET6, "ff02::1", &to.sin6_addr);
        for (int i = 0; i < 3; i++)
            if (sendto(fd, msg, sizeof msg, 0, (struct sockaddr *)&to, sizeof to) < 0) return report(-1);
        printf("sent\n");
        return 0;
    }
    if (!strcmp(cmd, "udpfrom")) {            /* udpfrom SRC DST PORT TEXT: one datagram from any source address */
        int v6 = strchr(argv[2], ':') != NULL, one = 1;
        int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM, 0);
        if (fd < 0) return report(-1);
        /* transparent: bind to an address that is not ours (root of the netns may) */
        if (setsockopt(fd, v6 ? IPPROTO_IPV6 : IPPROTO_IP, v6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, &one, sizeof one) < 0)
            return report(-1);
        struct sockaddr_storage src = {0}, dst = {0};
        socklen_t len;
        if (v6) {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&src, *d6 = (struct sockaddr_in6 *)&dst;
            s6->sin6_family = d6->sin6_family = AF_INET6;
            inet_pton(AF_INET6, argv[2], &s6->sin6_addr);
            inet_pton(AF_INET6, argv[3], &d6->sin6_addr);
            d6->sin6_port = htons(atoi(argv[4]));
            len = sizeof *s6;
        } else {
            struct sockaddr_in *s4 = (struct sockaddr_in *)&src, *d4 = (struct sockaddr_in *)&dst;
            s4->sin_family = d4->sin_family = AF_INET;
            inet_pton(AF_INET, argv[2], &s4->sin_addr);
            inet_pton(AF_INET, argv[3], &d4->sin_addr);
            d4->sin_port = htons(atoi(argv[4]));
            len = sizeof *s4;
        }
        if (bind(fd, (struct sockaddr *)&src, len) < 0) return report(-1);
        for (int i = 0; i < 3; i++)
            if (sendto(fd, argv[5], strlen(argv[5]), 0, (struct sockaddr *)&dst, len) < 0) return report(-1);
        printf("sent\n");
        return 0;
    }
    if (!strcmp(cmd, "cwd")) {
        char buf[4096];
        if (!getcwd(buf, sizeof buf)) return report(-1);
        printf("%s\n", buf);
        return 0;
    }
    int rc = security_cmd(argc, argv);
    if (rc >= 0) return rc;
    fprintf(stderr, "probe: unknown command %s\n", cmd);
    return 2;
}
