/*
 * memprog: a small program whose strace log is the test data for
 * `vmasim replay` (see README.md beside this file).
 *
 *   1. snapshot /proc/self/maps to maps-before.txt
 *   2. marker 1: madvise(marker_page, 7 * 4096, MADV_NORMAL)
 *   3. a varied set of memory operations (below), including a fork()
 *   4. marker 2: madvise(marker_page, 11 * 4096, MADV_NORMAL)
 *   5. snapshot /proc/self/maps to maps-after.txt
 *
 * The snapshots use raw open/read/write/close syscalls into a static buffer:
 * no stdio, no malloc, so no memory syscall (mmap/brk/...) happens while a
 * snapshot is taken, and nothing happens between a snapshot and its marker
 * except the marker itself. MADV_NORMAL on pages that already have the
 * default advice changes no VMA, so the markers are no-ops for the address
 * space; they are the only madvise calls the program makes.
 *
 * Every other syscall the program makes (open, write, wait4 ...) is either
 * outside strace's "memory" class or in the "process" class and changes no
 * mapping of the parent.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG 4096UL

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

/* 1 MiB static buffer: holds a maps snapshot; its first pages are the
 * marker pages (in .bss, mapped for the whole life of the program). */
static char buf[1 << 20] __attribute__((aligned(4096)));

static long sys(long n, long a, long b, long c, long d, long e, long f)
{
	return syscall(n, a, b, c, d, e, f);
}

static void die(int code)
{
	syscall(SYS_exit_group, code);
	for (;;)
		;
}

static void snapshot(const char *out)
{
	long fd = sys(SYS_open, (long)"/proc/self/maps", O_RDONLY, 0, 0, 0, 0);
	long len = 0, n;
	if (fd < 0)
		die(10);
	while ((n = sys(SYS_read, fd, (long)(buf + len), sizeof(buf) - len, 0, 0, 0)) > 0)
		len += n;
	sys(SYS_close, fd, 0, 0, 0, 0, 0);
	if (n < 0)
		die(11);
	fd = sys(SYS_open, (long)out, O_WRONLY | O_CREAT | O_TRUNC, 0644, 0, 0, 0);
	if (fd < 0)
		die(12);
	for (long off = 0; off < len; off += n)
		if ((n = sys(SYS_write, fd, (long)(buf + off), len - off, 0, 0, 0)) <= 0)
			die(13);
	sys(SYS_close, fd, 0, 0, 0, 0, 0);
}

static void *mm(void *addr, unsigned long len, int prot, int flags, int fd, long off)
{
	return (void *)sys(SYS_mmap, (long)addr, len, prot, flags, fd, off);
}

#define FAILED(p) ((unsigned long)(p) >= (unsigned long)-4095)

int main(void)
{
	/* A real file to map: 8 pages, created before the first snapshot
	 * (open/write are not memory syscalls, but keep the window clean). */
	long dfd = sys(SYS_open, (long)"memprog.data", O_RDWR | O_CREAT | O_TRUNC, 0644, 0, 0, 0);
	if (dfd < 0)
		die(20);
	for (int i = 0; i < 8; i++) {
		for (unsigned long j = 0; j < PG; j++)
			buf[j] = (char)('a' + i);
		if (sys(SYS_write, dfd, (long)buf, PG, 0, 0, 0) != (long)PG)
			die(21);
	}

	snapshot("maps-before.txt");
	sys(SYS_madvise, (long)buf, 7 * PG, MADV_NORMAL, 0, 0, 0);	/* marker 1 */

	/* anonymous, kernel-chosen address; touched so it has an anon_vma */
	char *a = mm(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (FAILED(a))
		die(30);
	a[0] = 1;
	a[15 * PG] = 1;

	/* hint address (honoured when free, 16 TiB is far from everything) */
	char *hint = (char *)0x100000000000UL;
	char *b = mm(hint, 4 * PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (FAILED(b))
		die(31);

	/* MAP_FIXED over pages 4..5 of a: splits a into three */
	if (FAILED(mm(a + 4 * PG, 2 * PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)))
		die(32);

	/* MAP_FIXED_NOREPLACE: once into a free hole (ok), once over a (EEXIST) */
	char *c = mm(hint + 64 * PG, 2 * PG, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (FAILED(c))
		die(33);
	if (!FAILED(mm(a + 8 * PG, PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)))
		die(34);

	/* file-backed: private read-only at page offset 1, private writable
	 * (COW write), shared writable */
	char *fp = mm(NULL, 3 * PG, PROT_READ, MAP_PRIVATE, dfd, PG);
	if (FAILED(fp))
		die(35);
	char *fw = mm(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, dfd, 4 * PG);
	if (FAILED(fw))
		die(36);
	fw[0] = 'X';
	char *fs = mm(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, dfd, 0);
	if (FAILED(fs))
		die(37);
	fs[PG] = 'S';

	/* munmap of a middle part: split */
	char *d = mm(NULL, 10 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (FAILED(d))
		die(38);
	if (sys(SYS_munmap, (long)(d + 3 * PG), 2 * PG, 0, 0, 0, 0))
		die(39);

	/* mprotect part of a mapping (split into 3), then back (merge) */
	char *e = mm(NULL, 8 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (FAILED(e))
		die(40);
	if (sys(SYS_mprotect, (long)(e + 2 * PG), 3 * PG, PROT_READ, 0, 0, 0))
		die(41);
	if (sys(SYS_mprotect, (long)(e + 2 * PG), 3 * PG, PROT_READ | PROT_WRITE, 0, 0, 0))
		die(42);
	/* and one left split: a PROT_NONE guard page at the start of d */
	if (sys(SYS_mprotect, (long)d, PG, PROT_NONE, 0, 0, 0))
		die(43);

	/* a stack-like mapping */
	char *st = mm(NULL, 8 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
	if (FAILED(st))
		die(44);

	/* errors: unaligned munmap (EINVAL), absurd mmap length (ENOMEM) */
	sys(SYS_munmap, (long)(a + 1), PG, 0, 0, 0, 0);
	mm(NULL, 1UL << 62, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	/* brk: grow by 32 pages, shrink to 8 (raw syscall: returns new break) */
	long brk0 = sys(SYS_brk, 0, 0, 0, 0, 0, 0);
	sys(SYS_brk, brk0 + 32 * PG, 0, 0, 0, 0, 0);
	((char *)brk0)[0] = 1;
	sys(SYS_brk, brk0 + 8 * PG, 0, 0, 0, 0, 0);

	/* mremap: grow (may move), shrink in place, move to a fixed address */
	char *r = mm(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (FAILED(r))
		die(45);
	r[0] = 'r';
	r = (char *)sys(SYS_mremap, (long)r, 4 * PG, 12 * PG, MREMAP_MAYMOVE, 0, 0);
	if (FAILED(r))
		die(46);
	if (FAILED(sys(SYS_mremap, (long)r, 12 * PG, 6 * PG, 0, 0, 0)))
		die(47);
	if (FAILED(sys(SYS_mremap, (long)r, 6 * PG, 6 * PG, MREMAP_MAYMOVE | MREMAP_FIXED,
		       (long)(hint + 256 * PG), 0)))
		die(48);

	/* unmap b entirely */
	if (sys(SYS_munmap, (long)b, 4 * PG, 0, 0, 0, 0))
		die(49);

	/* fork: the child maps, unmaps, changes protections, and exits;
	 * none of it is visible in the parent */
	pid_t pid = fork();
	if (pid < 0)
		die(50);
	if (pid == 0) {
		char *x = mm(NULL, 5 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		char *y = mm(NULL, 3 * PG, PROT_READ, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		if (FAILED(x) || FAILED(y))
			syscall(SYS_exit_group, 1);
		sys(SYS_munmap, (long)a, 16 * PG, 0, 0, 0, 0);
		sys(SYS_mprotect, (long)e, 8 * PG, PROT_READ, 0, 0, 0);
		_exit(3);
	}
	int status;
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 3)
		die(51);

	/* after the fork: one more mapping in the parent (file-backed, fixed
	 * over the middle of the shared file mapping) */
	if (FAILED(mm(fs + PG, PG, PROT_READ, MAP_PRIVATE | MAP_FIXED, dfd, 6 * PG)))
		die(52);

	sys(SYS_madvise, (long)buf, 11 * PG, MADV_NORMAL, 0, 0, 0);	/* marker 2 */
	snapshot("maps-after.txt");

	sys(SYS_close, dfd, 0, 0, 0, 0, 0);
	return 0;
}
