#include <unistd.h>
/* bench only (bench/p3_concurrency.py): P3's stand-in openvpn; it stays alive until killed,
   and costs one exec of a small static binary. */
int main(void) { for (;;) pause(); }
