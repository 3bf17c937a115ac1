/* bench only (bench/p2_routes.py): openvpn runs this as the hook; it times the real
   hook REAL (exec -> exit) and appends "dev script t0 t1 status" to LOG.  REAL and LOG are
   given with -D at build time (bench/cbuild.py). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
  double t0 = now(); int st = 0; pid_t pid = fork();
  if (pid == 0) { argv[0] = REAL; execv(REAL, argv); _exit(127); }
  waitpid(pid, &st, 0);
  double t1 = now(); const char *s = getenv("script_type"); const char *d = getenv("dev");
  FILE *f = fopen(LOG, "a");
  if (f) { fprintf(f, "%s %s %.6f %.6f %d\n", d ? d : "-", s ? s : "-", t0, t1, st); fclose(f); }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
