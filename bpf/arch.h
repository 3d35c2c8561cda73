/* SPDX-License-Identifier: GPL-2.0 */
/* What httptrace.bpf.c needs to know of the CPU it runs on, in one place: where the saved user registers
 * keep a syscall's arguments and number, where kernels before 5.15 keep those registers, and Go's
 * register ABI. Compiled with -D__TARGET_ARCH_x86 or -D__TARGET_ARCH_arm64 (build.py), against
 * vmlinux/<arch>/vmlinux.h; include it after vmlinux.h and bpf_core_read.h. */
#ifndef HTTPTRACE_ARCH_H
#define HTTPTRACE_ARCH_H

#if defined(__TARGET_ARCH_x86)

/* A syscall's first three arguments in the saved user registers, read at its sys_exit (di, si, dx;
 * then r10, r8, r9); orig_ax keeps the syscall number. */
#define ARG1(r) BPF_CORE_READ(r, di)
#define ARG2(r) BPF_CORE_READ(r, si)
#define ARG3(r) BPF_CORE_READ(r, dx)
#define SYSCALL_NR(r) BPF_CORE_READ(r, orig_ax)
/* The same from bpf_task_pt_regs()'s trusted pointer: plain loads instead of probe reads. */
#define TASK_ARG1(r) ((r)->di)
#define TASK_ARG2(r) ((r)->si)
#define TASK_ARG3(r) ((r)->dx)

/* compat: the user registers of the current syscall where kernels before 5.15 keep them, at the top of
 * the task's kernel stack (x86-64: stack + THREAD_SIZE, 16 KiB, or 32 KiB with KASAN; struct pt_regs
 * has one size on every x86-64 kernel). Trusted only if the syscall number saved there is this one's. */
static __always_inline struct pt_regs *stack_top_regs(int nr)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 stack = (__u64)BPF_CORE_READ(task, stack);
	struct pt_regs *regs = (struct pt_regs *)(stack + (16 << 10)) - 1;
	if (SYSCALL_NR(regs) == nr)
		return regs;
	regs = (struct pt_regs *)(stack + (32 << 10)) - 1;
	return SYSCALL_NR(regs) == nr ? regs : NULL;
}

/* Go's register ABI (Go >= 1.17). x86-64: arguments and results in RAX, RBX, RCX, ...; the running
 * goroutine's g in R14. */
#define GO_ARG1(r) ((r)->ax)  /* the receiver, c *Conn */
#define GO_ARG2(r) ((r)->bx)  /* b []byte: data pointer, */
#define GO_ARG3(r) ((r)->cx)  /*           length */
#define GO_RET1(r) ((r)->ax)  /* n int */
#define GO_RET2(r) ((r)->bx)  /* err error: the itab word, 0 when nil */
#define GO_G(r) ((r)->r14)
/* At a RET: where register argument i was spilled, in the caller's frame above the return address. */
#define GO_ARG_SPILL(r, i) ((r)->sp + 8 + 8 * (i))

#elif defined(__TARGET_ARCH_arm64)

/* At sys_exit x0 already holds the return value: the first argument is in orig_x0, the others in
 * x1..x5; syscallno keeps the number (arch/arm64/kernel/syscall.c, el0_svc_common). */
#define ARG1(r) BPF_CORE_READ(r, orig_x0)
#define ARG2(r) BPF_CORE_READ(r, regs[1])
#define ARG3(r) BPF_CORE_READ(r, regs[2])
#define SYSCALL_NR(r) BPF_CORE_READ(r, syscallno)
#define TASK_ARG1(r) ((r)->orig_x0)
#define TASK_ARG2(r) ((r)->regs[1])
#define TASK_ARG3(r) ((r)->regs[2])

/* compat: as on x86-64, task_pt_regs() is the last struct pt_regs below stack + THREAD_SIZE
 * (arch/arm64/include/asm/processor.h). THREAD_SIZE is 1 << max(14 + KASAN, PAGE_SHIFT) with
 * VMAP_STACK (asm/memory.h): 16 KiB with 4K or 16K pages, 32 KiB with KASAN, 64 KiB with 64K pages
 * (RHEL's and some Ampere kernels). struct pt_regs grew between kernels (sdei_ttbr1, pmr_save,
 * stackframe...): its size is the running kernel's, by CO-RE. */
static __always_inline struct pt_regs *regs_below(__u64 stack_top, int nr)
{
	struct pt_regs *regs = (struct pt_regs *)(stack_top - bpf_core_type_size(struct pt_regs));
	return SYSCALL_NR(regs) == nr ? regs : NULL;
}

static __always_inline struct pt_regs *stack_top_regs(int nr)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 stack = (__u64)BPF_CORE_READ(task, stack);
	struct pt_regs *regs = regs_below(stack + (16 << 10), nr);
	if (!regs)
		regs = regs_below(stack + (32 << 10), nr);
	if (!regs)
		regs = regs_below(stack + (64 << 10), nr);
	return regs;
}

/* Go's register ABI (Go >= 1.17). arm64: arguments and results in R0..R15; g in R28. The link register
 * holds the return address, and the caller keeps its saved return PC at 0(RSP): the spill slots start
 * at 8(RSP), where RSP is back at its entry value at each RET (cmd/compile/abi-internal.md). */
#define GO_ARG1(r) ((r)->regs[0])
#define GO_ARG2(r) ((r)->regs[1])
#define GO_ARG3(r) ((r)->regs[2])
#define GO_RET1(r) ((r)->regs[0])
#define GO_RET2(r) ((r)->regs[1])
#define GO_G(r) ((r)->regs[28])
#define GO_ARG_SPILL(r, i) ((r)->sp + 8 + 8 * (i))

#else
#error "httptrace.bpf.c: define __TARGET_ARCH_x86 or __TARGET_ARCH_arm64"
#endif

#endif /* HTTPTRACE_ARCH_H */
