/* isol8r's witness: prints who it runs as, and nothing else. It attacks nothing, so unlike
 * probe.c it has no guard: the security tests run it on the host too, as a setuid-root copy or a
 * copy with file capabilities, to show that those files really grant privilege where nothing
 * stops them (the twins of the setuid and file-capability probes).
 *
 *   ok ids uid=R/E/S gid=R/E/S capeff=HEX capprm=HEX nnp=N
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static unsigned long long status_hex(const char *text, const char *key) {
    const char *p = strstr(text, key);
    return p ? strtoull(p + strlen(key), NULL, 16) : ~0ULL;
}

int main(void) {
    char buf[8192] = "";
    FILE *f = fopen("/proc/self/status", "r");
    if (f) { buf[fread(buf, 1, sizeof buf - 1, f)] = 0; fclose(f); }
    uid_t r, e, s;
    gid_t gr, ge, gs;
    getresuid(&r, &e, &s);
    getresgid(&gr, &ge, &gs);
    printf("ok ids uid=%u/%u/%u gid=%u/%u/%u capeff=%llx capprm=%llx nnp=%d\n", r, e, s, gr, ge, gs,
           status_hex(buf, "CapEff:"), status_hex(buf, "CapPrm:"), prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0));
    return 0;
}
