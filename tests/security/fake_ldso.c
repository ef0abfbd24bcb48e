/* A planted dynamic loader, for the CVE-2019-5736 test of tests/security.
 *
 * The container puts this at /lib64/ld-linux-x86-64.so.2 and a script "#!/proc/self/exe" at
 * /bin/hijack. When ctd's exec helper execve()s /bin/hijack, the kernel resolves the script's
 * interpreter /proc/self/exe to the helper's own binary -- the HOST's Python -- and loads it
 * with the container's loader: this code, running inside the container with /proc/self/exe
 * being the host's runtime binary. It reports what it can do to that binary and never writes:
 *
 *   uid N                 its real uid inside
 *   exe_ino INO           inode of /proc/self/exe (opened O_PATH), or exe_path ERRNO
 *   exe_w ERRNO|ok        open("/proc/self/exe", O_WRONLY); closed at once if it worked
 *   reopen_w ERRNO|ok     open("/proc/self/fd/<O_PATH fd>", O_WRONLY), the same way
 *
 * Freestanding (no libc): gcc -nostdlib -static-pie -fPIE -O2 -fno-stack-protector. */

#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_fstat 5
#define SYS_getuid 102
#define SYS_exit_group 231
#define O_WRONLY 01
#define O_PATH 010000000

struct kstat {  /* x86_64 struct stat */
    unsigned long dev, ino, nlink;
    unsigned int mode, uid, gid, pad0;
    unsigned long rdev;
    long size, blksize, blocks;
    unsigned long atime, atime_ns, mtime, mtime_ns, ctime, ctime_ns;
    long unused[3];
};

static long sys3(long n, long a, long b, long c) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}

static unsigned long slen(const char *s) { unsigned long n = 0; while (s[n]) n++; return n; }
static void put(const char *s) { sys3(SYS_write, 1, (long)s, slen(s)); }

static void put_num(unsigned long v) {
    char buf[24];
    int i = sizeof buf;
    buf[--i] = 0;
    do { buf[--i] = '0' + v % 10; v /= 10; } while (v);
    put(buf + i);
}

static void result(const char *what, long rc) {  /* "what ok" or "what -ERRNO" */
    put(what);
    if (rc >= 0) put(" ok\n");
    else { put(" -"); put_num(-rc); put("\n"); }
}

void entry(void) {
    put("uid "); put_num(sys3(SYS_getuid, 0, 0, 0)); put("\n");
    long w = sys3(SYS_open, (long)"/proc/self/exe", O_WRONLY, 0);
    result("exe_w", w);
    if (w >= 0) sys3(SYS_close, w, 0, 0);
    long p = sys3(SYS_open, (long)"/proc/self/exe", O_PATH, 0);
    if (p < 0) {
        result("exe_path", p);
    } else {
        struct kstat st;
        if (sys3(SYS_fstat, p, (long)&st, 0) == 0) { put("exe_ino "); put_num(st.ino); put("\n"); }
        char path[32] = "/proc/self/fd/";
        int i = 14;
        if (p >= 10) path[i++] = '0' + p / 10;
        path[i++] = '0' + p % 10;
        path[i] = 0;
        long r = sys3(SYS_open, (long)path, O_WRONLY, 0);
        result("reopen_w", r);
        if (r >= 0) sys3(SYS_close, r, 0, 0);
    }
    sys3(SYS_exit_group, 0, 0, 0);
}

__asm__(".globl _start\n_start:\n\txor %rbp, %rbp\n\tand $-16, %rsp\n\tcall entry\n\thlt\n");
