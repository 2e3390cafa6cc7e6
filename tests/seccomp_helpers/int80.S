/* A static i386 program without libc, for the cross-ABI tests of tests/test_seccomp.py.
 *
 *   int80 NR [ARG0]
 *
 * makes one system call through the i386 ABI (int $0x80) with eax = NR and ebx = ARG0 (both
 * decimal, ARG0 defaults to 0), then exits 0 if it succeeded or with the errno if it failed.
 * Build: gcc -m32 -static -nostdlib -o int80 int80.S
 */
        .text
        .globl  _start
_start:
        xor     %ebx, %ebx
        cmpl    $3, (%esp)              /* argc >= 3: parse ARG0 */
        jl      1f
        mov     12(%esp), %esi
        call    parse
        mov     %eax, %ebx
1:      mov     8(%esp), %esi           /* argv[1]: NR */
        call    parse
        xor     %ecx, %ecx
        xor     %edx, %edx
        int     $0x80
        mov     %eax, %ebx
        test    %ebx, %ebx
        jns     2f
        neg     %ebx                    /* -errno -> errno */
        jmp     3f
2:      xor     %ebx, %ebx
3:      mov     $1, %eax                /* i386 __NR_exit */
        int     $0x80
        hlt

/* parse: the decimal number at %esi into %eax */
parse:
        xor     %eax, %eax
4:      movzbl  (%esi), %ecx
        test    %ecx, %ecx
        jz      5f
        sub     $'0', %ecx
        imul    $10, %eax, %eax
        add     %ecx, %eax
        inc     %esi
        jmp     4b
5:      ret
