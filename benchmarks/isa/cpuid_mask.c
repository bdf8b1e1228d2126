/* cpuid_mask: run a program as if its x86 CPU had no AVX-512, VNNI, BF16 or AMX (an AVX2-only CPU).
 *
 * Why: whether INT8 or bf16 pays off, and which kernels ONNX Runtime (MLAS), OpenVINO (oneDNN), XNNPACK, PyTorch
 * and NumPy run, is decided at run time from the CPUID instruction. Preloaded into a process
 * (LD_PRELOAD=libcpuid_mask.so), this library turns on the kernel's CPUID faulting (arch_prctl ARCH_SET_CPUID,
 * Linux >= 4.12; /proc/cpuinfo lists `cpuid_fault` where the CPU or hypervisor supports it), so every CPUID
 * raises SIGSEGV; its handler executes the real CPUID with faulting briefly off, clears the feature bits below
 * and resumes after the instruction. Every library then dispatches its AVX2 code path, natively, at full speed:
 * what an AVX2-only CPU runs, on this CPU's cores, caches and memory (so the timings are not those of another
 * microarchitecture). The setting is kept across fork and clone; children that exec inherit LD_PRELOAD and set it
 * again. A SIGSEGV handler that the program installs (Python's faulthandler, for one) is kept and called for
 * every fault that is not a CPUID.
 *
 * Written by hand: no maintained library does this. Intel SDE emulates other CPUs but is a closed download, not
 * a package, and runs an emulator; glibc's GLIBC_TUNABLES mask only glibc's own ifunc choices; oneDNN's
 * ONEDNN_MAX_CPU_ISA reaches oneDNN alone. benchmarks/isa/as_avx2.sh builds and applies it.
 *
 * Hidden: leaf 7.0 EBX AVX512F/DQ/IFMA/PF/ER/CD/BW/VL; ECX AVX512_VBMI/VBMI2/VNNI/BITALG/VPOPCNTDQ; EDX
 * AVX512_4VNNIW/4FMAPS/VP2INTERSECT/AMX_BF16/AVX512_FP16/AMX_TILE/AMX_INT8; leaf 7.1 EAX AVX_VNNI/AVX512_BF16/
 * AVX_IFMA, EDX AVX_VNNI_INT8/AVX_NE_CONVERT/AVX_VNNI_INT16; leaf 0xD.0 EAX the AVX-512 state components.
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_SET_CPUID 0x1012

static struct sigaction program_handler; /* the SIGSEGV handler the program asked for */
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);

static long cpuid_enabled(unsigned long on) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, on); }

static void hide(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d) {
  if (leaf == 7 && sub == 0) {
    *b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
    *c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
    *d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
  } else if (leaf == 7 && sub == 1) {
    *a &= ~((1u << 4) | (1u << 5) | (1u << 23));
    *d &= ~((1u << 4) | (1u << 5) | (1u << 10));
  } else if (leaf == 0xd && sub == 0) {
    *a &= ~0xE0u; /* opmask, ZMM_Hi256, Hi16_ZMM */
  }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
  ucontext_t *uc = context;
  greg_t *r = uc->uc_mcontext.gregs;
  const uint8_t *ip = (const uint8_t *)r[REG_RIP];
  if (ip != NULL && ip[0] == 0x0f && ip[1] == 0xa2) { /* CPUID */
    uint32_t a, b, c, d, leaf = (uint32_t)r[REG_RAX], sub = (uint32_t)r[REG_RCX];
    cpuid_enabled(1);
    __cpuid_count(leaf, sub, a, b, c, d);
    cpuid_enabled(0);
    hide(leaf, sub, &a, &b, &c, &d);
    r[REG_RAX] = a;
    r[REG_RBX] = b;
    r[REG_RCX] = c;
    r[REG_RDX] = d;
    r[REG_RIP] += 2;
    return;
  }
  if (program_handler.sa_flags & SA_SIGINFO) {
    program_handler.sa_sigaction(sig, info, context);
  } else if (program_handler.sa_handler == SIG_IGN) {
    return;
  } else if (program_handler.sa_handler != SIG_DFL) {
    program_handler.sa_handler(sig);
  } else {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    real_sigaction(SIGSEGV, &dfl, NULL); /* the fault repeats on return, now with the default action */
  }
}

/* the program's SIGSEGV handler is remembered, not installed: on_segv stays first and passes other faults on */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
  if (real_sigaction == NULL) real_sigaction = (int (*)(int, const struct sigaction *, struct sigaction *))dlsym(RTLD_NEXT, "sigaction");
  if (sig != SIGSEGV) return real_sigaction(sig, act, old);
  if (old != NULL) *old = program_handler;
  if (act != NULL) program_handler = *act;
  return 0;
}

__attribute__((constructor)) static void start(void) {
  struct sigaction sa;
  real_sigaction = (int (*)(int, const struct sigaction *, struct sigaction *))dlsym(RTLD_NEXT, "sigaction");
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  real_sigaction(SIGSEGV, &sa, &program_handler);
  if (cpuid_enabled(0) != 0) { /* never run unmasked while the caller believes otherwise */
    static const char msg[] = "error: cpuid_mask: this kernel or CPU has no CPUID faulting (arch_prctl ARCH_SET_CPUID failed)\n";
    ssize_t ignored = write(2, msg, sizeof msg - 1);
    (void)ignored;
    _exit(2);
  }
}
