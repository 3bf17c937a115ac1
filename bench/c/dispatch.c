/* bench only (bench/memory.py, bench/neighbour.py): the stand-in openvpn of the memory
   and noisy-neighbour rows.  With "--config idle..." it waits to be killed (one small
   exec, like standin.c: the PID-reply probes); with any other config it execs the test
   double SCENARIO (tests/hostile_openvpn.py), which runs that config as a scenario on
   the session channel.  SCENARIO is given with -D at build time (bench/cbuild.py). */
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
  for (int i = 1; i + 1 < argc; i++) {
    if (strcmp(argv[i], "--config") == 0) {
      const char *base = strrchr(argv[i + 1], '/');
      base = base ? base + 1 : argv[i + 1];
      if (strncmp(base, "idle", 4) == 0)
        for (;;) pause();
    }
  }
  argv[0] = SCENARIO;
  execv(SCENARIO, argv);
  return 127;
}
