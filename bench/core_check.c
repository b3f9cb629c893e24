/* What a second thread can add on this machine at this moment: a compute-bound loop (many
 * independent multiply-add chains, no memory traffic) timed on one thread, then on two threads
 * at once. Prints "CORES <ratio>": the work done per second by two threads over that by one
 * (2.00 for two whole cores; less where the second CPU shares its core or is taken by others).
 *   cc -O2 -march=native -pthread bench/core_check.c -o core_check && ./core_check [MILLION_ITERATIONS]
 * bench/thread_scaling.R builds and runs it beside each pair of fits. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Eight independent chains of 16-float multiply-adds, held in registers. */
typedef float v16 __attribute__((vector_size(64)));

static long iters = 200000000;
static volatile float sink;

static void *spin(void *arg) {
  long n = arg ? *(long *)arg : iters;
  v16 a[8];
  for (int j = 0; j < 8; j++)
    for (int l = 0; l < 16; l++) a[j][l] = (float)(j * 16 + l);
  const v16 m = a[0] * 0.0f + 0.99999f, b = a[0] * 0.0f + 0.00001f;
  for (long i = 0; i < n; i++) {
    a[0] = a[0] * m + b; a[1] = a[1] * m + b; a[2] = a[2] * m + b; a[3] = a[3] * m + b;
    a[4] = a[4] * m + b; a[5] = a[5] * m + b; a[6] = a[6] * m + b; a[7] = a[7] * m + b;
  }
  float s = 0;
  for (int j = 0; j < 8; j++)
    for (int l = 0; l < 16; l++) s += a[j][l];
  sink = s;
  return NULL;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Seconds for `n` threads each running the loop once, all at the same time. */
static double run(int n) {
  pthread_t t[2];
  double start = now();
  for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, spin, NULL);
  for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
  return now() - start;
}

int main(int argc, char **argv) {
  if (argc > 1) iters = (long)(atof(argv[1]) * 1e6);
  long warm = iters / 4;
  spin(&warm); /* warm-up: clocks up, code in cache */
  double one = run(1), two = run(2);
  printf("CORES %.2f (1 thread %.3f s, 2 threads %.3f s)\n", 2.0 * one / two, one, two);
  return 0;
}
