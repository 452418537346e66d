/* recprog: a small program for `vmasim record` + `replay --check` tests.
 *
 *   recprog threads N   start N threads, each mallocs and maps a little, join
 *   recprog mremap      grow a buffer with mremap (in place, then moving),
 *                       shrink it, move it with MREMAP_FIXED
 *   recprog fail N      map something, then exit with status N
 *   recprog signal      map something, then die of SIGABRT
 *
 * Built by the tests with `gcc -O1 -pthread` (dynamic, the default) and
 * static. Every mode ends by printing "ok" except `fail` and `signal`.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096UL

static void *worker(void *arg) {
    long i = (long)arg;
    /* A thread arena (glibc maps 64 MiB, trims it) and a private mapping. */
    char *p = malloc(1000 + i * 100);
    char *m = mmap(NULL, (i + 1) * PAGE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (!p || m == MAP_FAILED) abort();
    memset(m, 1, PAGE);
    mprotect(m, PAGE, PROT_READ);
    munmap(m, (i + 1) * PAGE);
    free(p);
    return NULL;
}

static int threads(int n) {
    pthread_t t[64];
    if (n > 64) n = 64;
    for (long i = 0; i < n; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)i)) return 1;
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    return 0;
}

static int grow(void) {
    /* A guard so the first grow can happen in place: reserve 64 pages, keep 4. */
    char *r = mmap(NULL, 64 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED) return 1;
    munmap(r + 4 * PAGE, 60 * PAGE);
    char *p = mmap(r, 4 * PAGE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    memset(p, 2, 4 * PAGE);
    /* In place (the pages above are free). */
    char *q = mremap(p, 4 * PAGE, 16 * PAGE, 0);
    if (q != p) return 2;
    /* Block the space above, then grow: must move. */
    char *b = mmap(p + 16 * PAGE, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (b == MAP_FAILED) return 3;
    q = mremap(p, 16 * PAGE, 64 * PAGE, MREMAP_MAYMOVE);
    if (q == MAP_FAILED) return 4;
    /* Shrink in place, then move to a chosen address. */
    q = mremap(q, 64 * PAGE, 8 * PAGE, 0);
    char *dst = mmap(NULL, 8 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    q = mremap(q, 8 * PAGE, 8 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
    if (q != dst || q[0] != 2) return 5;
    /* A failing call: old range not mapped. */
    if (mremap(p, PAGE, 2 * PAGE, 0) != MAP_FAILED) return 6;
    munmap(b, PAGE);
    return 0;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "threads";
    int rc = 0;
    char *m = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return 100;
    if (!strcmp(mode, "threads")) rc = threads(argc > 2 ? atoi(argv[2]) : 4);
    else if (!strcmp(mode, "mremap")) rc = grow();
    else if (!strcmp(mode, "fail")) return argc > 2 ? atoi(argv[2]) : 3;
    else if (!strcmp(mode, "signal")) abort();
    else rc = 99;
    if (rc == 0) puts("ok");
    return rc;
}
