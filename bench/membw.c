/* Read bandwidth of this host with T threads: each thread sums its own slice of a buffer far
 * larger than the caches (64-bit adds in 8 lanes, so the compiler vectorizes and the loop is
 * bound by memory, not by adds). Prints the median GB/s over R repetitions.
 *
 *   cc -O3 -march=native -pthread membw.c -o membw && ./membw THREADS MIB REPS
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct { const uint64_t *p; size_t n; uint64_t sum; } slice_t;

static void *read_slice(void *arg) {
  slice_t *s = arg;
  uint64_t acc[8] = {0};
  for (size_t i = 0; i + 8 <= s->n; i += 8)
    for (int j = 0; j < 8; j++) acc[j] += s->p[i + j];
  for (int j = 0; j < 8; j++) s->sum += acc[j];
  return NULL;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 2, reps = argc > 3 ? atoi(argv[3]) : 7;
  size_t bytes = (size_t)(argc > 2 ? atoi(argv[2]) : 1024) << 20, n = bytes / 8;
  uint64_t *buf = malloc(bytes);
  if (!buf || threads < 1 || reps < 1) return 1;
  memset(buf, 1, bytes);  /* touch every page before timing */
  pthread_t tid[256];
  slice_t sl[256];
  double gbs[64];
  uint64_t check = 0;
  if (threads > 256) threads = 256;
  if (reps > 64) reps = 64;
  for (int r = 0; r < reps; r++) {
    double t0 = now();
    for (int t = 0; t < threads; t++) {
      sl[t] = (slice_t){buf + n / threads * t, n / threads, 0};
      pthread_create(&tid[t], NULL, read_slice, &sl[t]);
    }
    for (int t = 0; t < threads; t++) { pthread_join(tid[t], NULL); check += sl[t].sum; }
    gbs[r] = (double)(n / threads * threads * 8) / (now() - t0) / 1e9;
  }
  qsort(gbs, reps, sizeof gbs[0], cmp);
  printf("%.3f %llu\n", gbs[reps / 2], (unsigned long long)(check & 1));
  return 0;
}
