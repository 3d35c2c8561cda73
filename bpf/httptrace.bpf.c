// SPDX-License-Identifier: GPL-2.0
/* Kernel agent: turns socket syscalls of HTTP connections into open / data / close events.
 *
 * Hooks are syscall tracepoints (the kernels we target have no kprobes) and, for TLS, uprobes. The data
 * syscalls come in two families of programs in this one object; user space loads one of them, chosen by
 * probing the kernel's helpers (programs declared SEC("?...") are not loaded unless asked for):
 *   fast   (5.17+) exit-only: the arguments are read back from the task's saved user registers
 *          (bpf_task_pt_regs), one program run per syscall, and bpf_loop walks the payload;
 *   compat (5.8+)  sys_enter_* stashes the arguments per thread, sys_exit_* acts on them, and a loop
 *          bounded at compile time walks the payload. Nothing in these programs may even mention
 *          bpf_loop: a 5.10 verifier rejects its callback in dead code too.
 * Programs that need neither (accept, close, the TLS entry probes) serve both families.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "arch.h"
#include "httptrace.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define IPPROTO_TCP 6
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define EINPROGRESS 115

/* Tries to find an HTTP/1 start line or HTTP/2 frames on a connection that was open before we attached:
 * its first bytes we see may be the middle of a body. A connection we saw from accept()/connect() gets
 * one try. */
#define MID_STREAM_TRIES 16

/* The compat family's copy loop is unrolled by the verifier, so its bound is fixed here: enough steps for
 * the default --max-body (16 MiB + 64 KiB of headers) in one syscall, plus HT_MAX_IOV iovecs. Bytes
 * beyond the steps are reported as not copied (truncation, never loss). */
#define COMPAT_MAX_CHUNKS 514
#define COMPAT_COPY_STEPS (COMPAT_MAX_CHUNKS + 2 * HT_MAX_IOV + 2)

const volatile struct ht_config ht_cfg = {
	.max_copy = 64 << 20,
};

/* Keep the event structs in the object's BTF so the contract test can compare them with events.py. */
const struct ht_open_event *unused_open_event __attribute__((unused));
const struct ht_data_event *unused_data_event __attribute__((unused));
const struct ht_close_event *unused_close_event __attribute__((unused));
const struct ht_conn_info *unused_conn_info __attribute__((unused));
const struct ht_go_offsets *unused_go_offsets __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 32 << 20); /* user space resizes before load */
} events SEC(".maps");

/* (tgid << 32 | fd) -> conn_info. LRU: a busy host evicts the coldest instead of failing inserts. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct ht_conn_info);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} target_tgids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16);
	__type(value, __u8);
} target_ports SEC(".maps");

/* HTTP/1 messages skipped whole under overload, indexed by enum ht_skip. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HT_SKIPS);
	__type(key, __u32);
	__type(value, __u64);
} skipped SEC(".maps");

/* Failed ring-buffer writes, indexed by enum ht_event_type. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

/* A data event is too big for the 512-byte stack: it is built here, one slot per CPU. A plain array
 * indexed by CPU, because per-CPU map values are limited to 32 KiB. User space sets max_entries to the
 * number of possible CPUs. Small iovecs are packed into one event at data + filled; all the verifier
 * can prove is filled < HT_CHUNK_SIZE and a copy <= 0xffff (a mask), so `spill` makes that in bounds. */
struct scratch_event {
	struct ht_data_event ev;
	__u8 spill[2 * HT_CHUNK_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct scratch_event);
} scratch SEC(".maps");

static __always_inline void count_drop(__u32 type)
{
	__u64 *n = bpf_map_lookup_elem(&drops, &type);
	if (n)
		*n += 1;
}

/* Wake-ups cost the reader a syscall and a context switch per event at low rates: batch them. */
static __always_inline __u64 wakeup_flag(void)
{
	if (!ht_cfg.wakeup_bytes)
		return 0;
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= ht_cfg.wakeup_bytes ? BPF_RB_FORCE_WAKEUP
										      : BPF_RB_NO_WAKEUP;
}

static __always_inline bool process_wanted(__u32 tgid)
{
	if (tgid == ht_cfg.self_tgid)
		return false;
	if (ht_cfg.filter_tgids && !bpf_map_lookup_elem(&target_tgids, &tgid))
		return false;
	if (ht_cfg.filter_comm) {
		char comm[HT_COMM_LEN];
		bpf_get_current_comm(comm, sizeof(comm));
		for (int i = 0; i < HT_COMM_LEN; i++) {
			if (comm[i] != ht_cfg.comm[i])
				return false;
			if (comm[i] == 0)
				break;
		}
	}
	return true;
}

static __always_inline bool port_wanted(struct sock *sk)
{
	if (!ht_cfg.filter_ports)
		return true;
	__u16 local = BPF_CORE_READ(sk, __sk_common.skc_num);
	__u16 remote = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	return bpf_map_lookup_elem(&target_ports, &local) || bpf_map_lookup_elem(&target_ports, &remote);
}

/* fd -> struct sock of a TCP socket over IPv4/IPv6, or NULL for anything else. */
static __always_inline struct sock *tcp_sock_of_fd(int fd)
{
	/* Not the _btf variant (5.11): the reads below are CO-RE probe reads either way. */
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = NULL;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (!file)
		return NULL;
	umode_t mode = BPF_CORE_READ(file, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return NULL;
	struct socket *sock = BPF_CORE_READ(file, private_data);
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return NULL;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return NULL;
	if (BPF_CORE_READ(sk, sk_type) != SOCK_STREAM || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return NULL;
	return sk;
}

/* Registers (tgid, fd) as a connection to watch; non-TCP and filtered sockets are cached as ignored so
 * later syscalls on them cost one lookup (and nothing can make them capturable: not even TLS). */
static __always_inline struct ht_conn_info *track(__u64 key, __u32 tgid, int fd, __u8 role_hint)
{
	struct ht_conn_info ci = {};
	struct sock *sk = tcp_sock_of_fd(fd);
	ci.id.tgid = tgid;
	ci.id.fd = fd;
	ci.id.tsid = bpf_ktime_get_ns();
	ci.sk = (__u64)sk;
	ci.role_hint = role_hint;
	ci.state = (sk && port_wanted(sk)) ? HT_CONN_UNKNOWN : HT_CONN_IGNORED;
	bpf_map_update_elem(&conns, &key, &ci, BPF_ANY);
	return bpf_map_lookup_elem(&conns, &key);
}

/* A status line: "HTTP/1." */
static __always_inline bool is_status_start(const __u8 *b)
{
	return b[0] == 'H' && b[1] == 'T' && b[2] == 'T' && b[3] == 'P' && b[4] == '/' && b[5] == '1' && b[6] == '.';
}

/* A request line: a method followed by a space (OPTIONS and CONNECT by their 7 letters). */
static __always_inline bool is_request_start(const __u8 *b)
{
	if (b[0] == 'G' && b[1] == 'E' && b[2] == 'T' && b[3] == ' ')
		return true;
	if (b[0] == 'P' && b[1] == 'U' && b[2] == 'T' && b[3] == ' ')
		return true;
	if (b[0] == 'P' && b[1] == 'O' && b[2] == 'S' && b[3] == 'T' && b[4] == ' ')
		return true;
	if (b[0] == 'H' && b[1] == 'E' && b[2] == 'A' && b[3] == 'D' && b[4] == ' ')
		return true;
	if (b[0] == 'P' && b[1] == 'A' && b[2] == 'T' && b[3] == 'C' && b[4] == 'H' && b[5] == ' ')
		return true;
	if (b[0] == 'T' && b[1] == 'R' && b[2] == 'A' && b[3] == 'C' && b[4] == 'E' && b[5] == ' ')
		return true;
	if (b[0] == 'D' && b[1] == 'E' && b[2] == 'L' && b[3] == 'E' && b[4] == 'T' && b[5] == 'E' && b[6] == ' ')
		return true;
	if (b[0] == 'O' && b[1] == 'P' && b[2] == 'T' && b[3] == 'I' && b[4] == 'O' && b[5] == 'N' && b[6] == 'S')
		return true;
	return b[0] == 'C' && b[1] == 'O' && b[2] == 'N' && b[3] == 'N' && b[4] == 'E' && b[5] == 'C' && b[6] == 'T';
}

/* ---- HTTP/2: recognised here only so its bytes are reported; user space reads the frames ---------- */

#define H2_FRAME_HEADER 9
#define H2_DEFAULT_MAX_FRAME 16384
#define H2_MAX_CHAIN 8 /* frame headers walked to recognise a connection joined mid-stream */
enum { H2_DATA, H2_HEADERS, H2_PRIORITY, H2_RST_STREAM, H2_SETTINGS, H2_PUSH_PROMISE, H2_PING, H2_GOAWAY,
       H2_WINDOW_UPDATE, H2_CONTINUATION };

/* The client connection preface, all 24 bytes: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", as three
 * little-endian words (the BPF target is little-endian on x86-64 and arm64; a string constant would
 * land in .rodata, which holds the config). */
static __always_inline bool is_h2_preface(__u64 buf, __u64 len)
{
	__u64 w[3];
	if (len < sizeof(w) || bpf_probe_read_user(w, sizeof(w), (void *)buf))
		return false;
	return w[0] == 0x5448202a20495250ULL && w[1] == 0x0a0d302e322f5054ULL && w[2] == 0x0a0d0a0d4d530a0dULL;
}

/* A frame header (RFC 9113 4.1) that could be real: a known type, the R bit clear, a length within
 * the default maximum (fixed for the types that have one), on stream 0 exactly for the connection's
 * own frames. Returns the payload length, or -1. */
static __always_inline long h2_frame_length(const __u8 *h)
{
	__u32 len = (__u32)h[0] << 16 | (__u32)h[1] << 8 | h[2];
	__u8 type = h[3];
	bool stream0 = h[5] == 0 && h[6] == 0 && h[7] == 0 && h[8] == 0;
	if (type > H2_CONTINUATION || (h[5] & 0x80) || len > H2_DEFAULT_MAX_FRAME)
		return -1;
	bool connection_frame = type == H2_SETTINGS || type == H2_PING || type == H2_GOAWAY;
	if (type != H2_WINDOW_UPDATE && connection_frame != stream0)
		return -1;
	if ((type == H2_SETTINGS && len % 6) || (type == H2_PING && len != 8) ||
	    ((type == H2_RST_STREAM || type == H2_WINDOW_UPDATE) && len != 4) || (type == H2_PRIORITY && len != 5))
		return -1;
	return len;
}

/* The server's first frame: SETTINGS (not an ACK) on stream 0. */
static __always_inline bool is_h2_settings_start(const __u8 *h)
{
	return h[3] == H2_SETTINGS && h[4] == 0 && h2_frame_length(h) >= 0;
}

/* A connection joined mid-stream: whole plausible frames that end exactly where the bytes end. Never
 * one header alone: Go reads a frame's 9-byte header and its payload in separate syscalls. */
static __always_inline bool is_h2_frame_chain(__u64 buf, __u64 len)
{
	__u64 off = 0;
	for (int i = 0; i < H2_MAX_CHAIN; i++) {
		__u8 h[H2_FRAME_HEADER];
		if (off + sizeof(h) > len || bpf_probe_read_user(h, sizeof(h), (void *)(buf + off)))
			return false;
		long n = h2_frame_length(h);
		if (n < 0)
			return false;
		off += sizeof(h) + n;
		if (off == len)
			return true;
	}
	return false;
}

enum { NOT_HTTP, HTTP1, HTTP2 };

/* What a connection's first bytes we see (len at buf) start: HTTP/1, HTTP/2 or neither. */
static __always_inline int http_kind(__u64 buf, __u64 len, bool mid_stream)
{
	__u8 head[H2_FRAME_HEADER];
	if (len < sizeof(head) || bpf_probe_read_user(head, sizeof(head), (void *)buf))
		return NOT_HTTP;
	if (is_request_start(head) || is_status_start(head))
		return HTTP1;
	if (is_h2_settings_start(head) || is_h2_preface(buf, len))
		return HTTP2;
	return mid_stream && is_h2_frame_chain(buf, len) ? HTTP2 : NOT_HTTP;
}

static __always_inline void send_open(struct ht_conn_info *ci)
{
	struct ht_open_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop(HT_EVENT_OPEN);
		return; /* retried on the next data event: data must not arrive without its addresses */
	}
	struct sock *sk = (struct sock *)ci->sk;
	e->hdr.type = HT_EVENT_OPEN;
	e->hdr._pad0 = 0;
	e->hdr.ts_ns = bpf_ktime_get_ns();
	e->hdr.conn = ci->id;
	e->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	e->remote_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	e->role_hint = ci->role_hint;
	e->tls = ci->tls;
	__builtin_memset(e->local_addr, 0, sizeof(e->local_addr));
	__builtin_memset(e->remote_addr, 0, sizeof(e->remote_addr));
	if (e->family == AF_INET) {
		bpf_core_read(e->local_addr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(e->remote_addr, 4, &sk->__sk_common.skc_daddr);
	} else {
		bpf_core_read(e->local_addr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(e->remote_addr, 16, &sk->__sk_common.skc_v6_daddr);
	}
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->cgroup_id = bpf_get_current_cgroup_id();
	bpf_ringbuf_submit(e, wakeup_flag());
	ci->open_sent = 1;
}

/* State of one syscall's copy, walked step by step by bpf_loop. A plain buffer is an iovec of one.
 * It lives in a per-CPU map, not on the stack: the verifier checks bpf_loop callbacks like loops, and
 * values it tracks on the stack (every offset changes each step) would never converge. */
struct copy_state {
	struct ht_conn_id id;
	__u64 ts_ns;
	__u64 pos;         /* stream offset of the next byte to copy */
	__u64 left;        /* bytes still to copy (after the cap) */
	__u64 seg_addr;    /* current user segment */
	__u64 seg_left;
	__u64 iov;         /* user address of struct iovec[], 0 for a plain buffer */
	__u32 iov_next;
	__u32 iov_count;
	__u32 filled;      /* bytes waiting in this CPU's scratch event */
	__u8 direction;
	__u8 flags;        /* enum ht_data_flags */
	__u8 _pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct copy_state);
} copy_states SEC(".maps");

/* Sends the bytes gathered in the scratch event, which end at st->pos. */
static __always_inline void flush_chunk(struct copy_state *st, struct scratch_event *s)
{
	__u32 len = st->filled;
	if (len == 0 || len > HT_CHUNK_SIZE)
		return;
	/* Make every later use of len go through one bounded register (clang may keep an unchecked copy). */
	asm volatile("%[len] &= 0xffff" : [len] "+r"(len));
	struct ht_data_event *e = &s->ev;
	e->hdr.type = HT_EVENT_DATA;
	e->hdr._pad0 = 0;
	e->hdr.ts_ns = st->ts_ns;
	e->hdr.conn = st->id;
	e->pos = st->pos - len;
	e->len = len;
	e->not_copied = 0;
	e->direction = st->direction;
	e->flags = st->flags;
	if (bpf_ringbuf_output(&events, e, offsetof(struct ht_data_event, data) + len, wakeup_flag()))
		count_drop(HT_EVENT_DATA); /* pos still advances: user space sees the hole */
	st->filled = 0;
}

static long copy_step(__u32 index, void *unused)
{
	__u32 zero = 0, cpu = bpf_get_smp_processor_id();
	struct copy_state *st = bpf_map_lookup_elem(&copy_states, &zero);
	struct scratch_event *s = bpf_map_lookup_elem(&scratch, &cpu);
	if (!st || !s || st->left == 0)
		return 1;
	if (st->seg_left == 0) {
		struct iovec v;
		if (!st->iov || st->iov_next >= st->iov_count || st->iov_next >= HT_MAX_IOV)
			return 1;
		if (bpf_probe_read_user(&v, sizeof(v), (void *)(st->iov + st->iov_next * sizeof(v))))
			return 1;
		st->iov_next++;
		st->seg_addr = (__u64)v.iov_base;
		st->seg_left = v.iov_len;
		return 0;
	}
	__u32 filled = st->filled & (HT_CHUNK_SIZE - 1); /* never HT_CHUNK_SIZE here: a full chunk is sent */
	__u64 n = st->seg_left < st->left ? st->seg_left : st->left;
	if (n > HT_CHUNK_SIZE - filled)
		n = HT_CHUNK_SIZE - filled;
	__u32 len = n;
	/* One bounded register for every use: clang may pass an unchecked copy, which 6.1 rejects. */
	asm volatile("%[len] &= 0xffff" : [len] "+r"(len));
	if (bpf_probe_read_user(s->ev.data + filled, len, (void *)st->seg_addr))
		return 1;
	st->filled = filled + len;
	st->pos += len;
	st->left -= len;
	st->seg_addr += len;
	st->seg_left -= len;
	if (st->filled >= HT_CHUNK_SIZE)
		flush_chunk(st, s);
	return 0;
}

/* compat: the steps as global functions, which the verifier checks once each, on their own: a loop
 * around one costs a few instructions per turn instead of every path through its body (inlined, the
 * copy loop took 314k of the 1M instructions a verifier allows, twice that in the TLS return probe;
 * one level of this, 68k and 15 s to load under QEMU on 5.10). Both return 1 when the copy is done. */
__noinline int compat_copy_step(__u32 index)
{
	return copy_step(index, NULL);
}

#define COMPAT_STEPS_PER_CALL 64

__noinline int compat_copy_steps(__u32 index)
{
	for (__u32 i = 0; i < COMPAT_STEPS_PER_CALL; i++)
		if (compat_copy_step(i))
			return 1;
	return 0;
}

/* Bytes of this syscall that were not copied (cap, more than HT_MAX_IOV segments, sendfile) travel in a
 * payload-less event, so user space can tell truncation from loss. */
static __always_inline void send_not_copied(struct ht_conn_info *ci, __u8 direction, __u64 pos, __u64 count,
					    __u8 flags)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct scratch_event *s = bpf_map_lookup_elem(&scratch, &cpu);
	if (!s)
		return;
	struct ht_data_event *e = &s->ev;
	e->hdr.type = HT_EVENT_DATA;
	e->hdr._pad0 = 0;
	e->hdr.ts_ns = bpf_ktime_get_ns();
	e->hdr.conn = ci->id;
	e->pos = pos;
	e->len = 0;
	e->not_copied = count > 0xffffffff ? 0xffffffff : count;
	e->direction = direction;
	e->flags = flags;
	if (bpf_ringbuf_output(&events, e, offsetof(struct ht_data_event, data), wakeup_flag()))
		count_drop(HT_EVENT_DATA);
}

static __always_inline void count_skip(__u32 kind)
{
	__u64 *n = bpf_map_lookup_elem(&skipped, &kind);
	if (n)
		*n += 1;
}

/* Overload, HTTP/1: whether to skip these bytes (len at buf, the start of a syscall's buffer) whole.
 * While the ring buffer holds more than shed_bytes (the reader is behind), each new request is skipped
 * (decided at its start line, at the start of a buffer, where a message begins), with the rest of it and
 * the response that answers it (by count: HTTP/1 answers in order), so that what user space gets is
 * whole exchanges; a connection captures again at its next request line once the ring has room.
 * HTTP/2 cannot do this (the HPACK table is connection state): its bytes are dropped, counted, as before. */
static __always_inline bool shed(struct ht_conn_info *ci, __u64 buf, __u64 len, __u8 direction)
{
	__u8 bit = 1 << (direction & 1);
	bool over = ht_cfg.shed_bytes && bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > ht_cfg.shed_bytes;
	if (!over && !(ci->skipping & bit) && !ci->responses_to_skip)
		return false; /* the usual case */
	__u8 head[10]; /* "HTTP/1.1 2": a status line up to its first digit */
	if (len < sizeof(head) || bpf_probe_read_user(head, sizeof(head), (void *)buf))
		return ci->skipping & bit;
	if (is_request_start(head)) {
		if (!over) {
			ci->skipping &= ~bit;
			return false;
		}
		ci->skipping |= bit;
		ci->responses_to_skip++;
		count_skip(HT_SKIPPED_REQUESTS);
		return true;
	}
	if (is_status_start(head)) {
		if (!ci->responses_to_skip) { /* answers a request that was captured */
			ci->skipping &= ~bit;
			return false;
		}
		ci->skipping |= bit;
		if (head[9] != '1') { /* a 1xx is followed by the final response, in this buffer or the next */
			ci->responses_to_skip--;
			count_skip(HT_SKIPPED_RESPONSES);
		}
		return true;
	}
	return ci->skipping & bit; /* the rest of the message under way */
}

/* Reports `ret` bytes at buf (or in the iovec array iov) on a connection: classifies it on its first
 * bytes, sends the open event once, then the payload in chunks. */
static __always_inline int capture(struct ht_conn_info *ci, long ret, __u64 buf, __u64 iov, __u64 iov_count,
				   __u8 direction, __u8 flags, bool compat)
{
	__u64 first_len = ret; /* bytes at buf: the first iovec's, for an iovec array */
	if (iov) {
		struct iovec first;
		if (bpf_probe_read_user(&first, sizeof(first), (void *)iov))
			return 0;
		buf = (__u64)first.iov_base;
		first_len = first.iov_len < (__u64)ret ? first.iov_len : (__u64)ret;
	}
	if (ci->state == HT_CONN_UNKNOWN) {
		int kind = http_kind(buf, first_len, ci->role_hint == HT_ROLE_UNKNOWN);
		if (kind == NOT_HTTP) {
			ci->tries++;
			if (ci->role_hint != HT_ROLE_UNKNOWN || ci->tries >= MID_STREAM_TRIES)
				ci->state = HT_CONN_NOT_HTTP;
			return 0;
		}
		ci->state = HT_CONN_HTTP;
		ci->http1 = kind == HTTP1;
	}
	if (ci->http1 && shed(ci, buf, first_len, direction))
		return 0; /* pos stays: user space sees the messages it gets back to back */
	if (!ci->open_sent)
		send_open(ci);

	__u32 zero = 0;
	struct copy_state *st = bpf_map_lookup_elem(&copy_states, &zero);
	if (!st)
		return 0;
	st->id = ci->id;
	st->ts_ns = bpf_ktime_get_ns();
	st->pos = ci->pos[direction & 1];
	st->left = (__u64)ret < ht_cfg.max_copy ? (__u64)ret : ht_cfg.max_copy;
	st->seg_addr = iov ? 0 : buf;
	st->seg_left = iov ? 0 : (__u64)ret;
	st->iov = iov;
	st->iov_next = 0;
	st->iov_count = iov_count;
	st->filled = 0;
	st->direction = direction;
	st->flags = flags;
	/* steps: one per chunk, one per iovec to read it, one per iovec that ends a partial chunk.
	 * `compat` is a constant in every program, so each gets exactly one of these loops. */
	if (compat) {
		for (__u32 i = 0; i < COMPAT_COPY_STEPS / COMPAT_STEPS_PER_CALL + 1; i++)
			if (compat_copy_steps(i))
				break;
	} else {
		bpf_loop(ht_cfg.max_copy / HT_CHUNK_SIZE + 2 * HT_MAX_IOV + 2, copy_step, NULL, 0);
	}
	__u32 cpu = bpf_get_smp_processor_id();
	struct scratch_event *s = bpf_map_lookup_elem(&scratch, &cpu);
	if (s)
		flush_chunk(st, s);
	__u64 copied = st->pos - ci->pos[direction & 1];
	if (copied < (__u64)ret)
		send_not_copied(ci, direction, st->pos, ret - copied, flags);
	ci->pos[direction & 1] += ret;
	return 0;
}

static __always_inline struct ht_conn_info *lookup_or_track(__u32 tgid, int fd)
{
	__u64 key = ((__u64)tgid << 32) | (__u32)fd;
	struct ht_conn_info *ci = bpf_map_lookup_elem(&conns, &key);
	return ci ? ci : track(key, tgid, fd, HT_ROLE_UNKNOWN);
}

/* A TLS library call under way on this thread: the syscalls it makes carry ciphertext, and tell us
 * which fd the SSL object writes to. */
struct tls_call {
	__u64 ssl;
	__u64 buf;
	__u64 size_out; /* size_t * of SSL_read_ex/SSL_write_ex, 0 for SSL_read/SSL_write */
	__s32 fd;       /* set by the nested read/write syscall, -1 until then */
	__u8 direction;
	__u8 _pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32); /* thread id */
	__type(value, struct tls_call);
} tls_calls SEC(".maps");

/* compat: a data syscall's arguments from sys_enter_* to its sys_exit_*, per thread. Only syscalls on
 * connections that may be captured are stashed; once taken, the entry stays with fd = NO_ARGS, so the
 * exit of a thread's every other syscall finds it and stops at one lookup. A thread without an entry has
 * not been seen since the tracer attached: its syscall may have entered before (a server blocked in
 * read() on a keep-alive connection), and its arguments are found another way (stack_top_regs). */
#define NO_ARGS (~0ULL)

struct syscall_args {
	__u64 fd;
	__u64 arg2; /* buf, iov or msghdr */
	__u64 arg3; /* count, iovcnt or flags */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct syscall_args);
} stashed_args SEC(".maps");

/* fast: the task's saved user registers, where ARG1..ARG3 (arch.h) read the syscall's arguments. */
static __always_inline struct pt_regs *syscall_regs(void)
{
	return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

/* The contexts are struct syscall_trace_exit/_enter, the layout syscall tracepoints really have, not
 * trace_event_raw_sys_exit: on PREEMPT_RT kernels the two differ and CO-RE would move `ret` past the
 * event (attach then fails with EACCES). */

enum buffer_kind {
	BUF_PLAIN, /* (fd, buf, count): read, write, recvfrom, sendto */
	BUF_IOV,   /* (fd, iov, iovcnt): readv, writev */
	BUF_MSG,   /* (fd, msghdr, flags): recvmsg, sendmsg */
};

/* The connection a data syscall on fd may be captured on, or NULL. A syscall made inside a TLS library
 * call carries ciphertext: it only tells that call its fd, and is not captured. */
static __always_inline struct ht_conn_info *data_conn(__u64 pid_tgid, int fd)
{
	/* The connection first: on a busy host most syscalls are on sockets ignored for good (not TCP,
	 * filtered out), which no TLS call can make capturable, and they stop at this one lookup. */
	struct ht_conn_info *ci = lookup_or_track(pid_tgid >> 32, fd);
	if (!ci || ci->state == HT_CONN_IGNORED)
		return NULL;
	if (ht_cfg.tls) {
		__u32 tid = pid_tgid;
		struct tls_call *call = bpf_map_lookup_elem(&tls_calls, &tid);
		if (call) {
			call->fd = fd; /* the plaintext is reported when the TLS call returns */
			return NULL;
		}
	}
	if (ci->state == HT_CONN_NOT_HTTP || ci->tls)
		return NULL;
	return ci;
}

static __always_inline int capture_syscall(struct ht_conn_info *ci, long ret, __u64 arg2, __u64 arg3,
					   enum buffer_kind kind, __u8 direction, bool compat)
{
	__u64 buf = 0, iov = 0, iov_count = 0;
	if (kind == BUF_PLAIN) {
		buf = arg2;
	} else if (kind == BUF_IOV) {
		iov = arg2;
		iov_count = arg3;
	} else {
		struct user_msghdr msg;
		if (bpf_probe_read_user(&msg, sizeof(msg), (void *)arg2))
			return 0;
		iov = (__u64)msg.msg_iov;
		iov_count = msg.msg_iovlen;
	}
	return capture(ci, ret, buf, iov, iov_count, direction, 0, compat);
}

/* fast: the whole of a data syscall at its exit. Cheapest checks first: most syscalls on a host fail
 * (EAGAIN) or belong to processes and sockets we ignore, and must cost as little as possible. */
static __always_inline int fast_data(long ret, enum buffer_kind kind, __u8 direction)
{
	if (ret <= 0)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!process_wanted(pid_tgid >> 32))
		return 0;
	struct pt_regs *r = syscall_regs();
	struct ht_conn_info *ci = data_conn(pid_tgid, TASK_ARG1(r));
	if (!ci)
		return 0;
	return capture_syscall(ci, ret, TASK_ARG2(r), TASK_ARG3(r), kind, direction, false);
}

static __always_inline void stash_args(__u64 pid_tgid, __u64 fd, __u64 arg2, __u64 arg3)
{
	struct syscall_args args = {.fd = fd, .arg2 = arg2, .arg3 = arg3};
	bpf_map_update_elem(&stashed_args, &pid_tgid, &args, BPF_ANY);
}

/* compat, at entry: remember the arguments of a syscall whose bytes may be captured. */
static __always_inline int compat_data_enter(struct syscall_trace_enter *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!process_wanted(pid_tgid >> 32))
		return 0;
	if (!data_conn(pid_tgid, ctx->args[0]))
		return 0;
	stash_args(pid_tgid, ctx->args[0], ctx->args[1], ctx->args[2]);
	return 0;
}

/* compat, at exit: the arguments its entry stashed, taken (the entry is left as NO_ARGS). */
static __always_inline bool take_args(struct syscall_args *stashed, struct syscall_args *out)
{
	if (!stashed || stashed->fd == NO_ARGS)
		return false;
	*out = *stashed;
	stashed->fd = NO_ARGS;
	return true;
}

static __always_inline bool take_stashed(__u64 pid_tgid, struct syscall_args *out)
{
	return take_args(bpf_map_lookup_elem(&stashed_args, &pid_tgid), out);
}

/* compat: the first syscall exit of a thread since the tracer attached. */
static __always_inline int compat_first_exit(struct syscall_trace_exit *ctx, __u64 pid_tgid,
					     enum buffer_kind kind, __u8 direction)
{
	struct syscall_args none;
	__builtin_memset(&none, 0xff, sizeof(none)); /* fd = NO_ARGS; not an initializer, which clang would
						      * put in .rodata, where user space writes the config */
	bpf_map_update_elem(&stashed_args, &pid_tgid, &none, BPF_NOEXIST);
	if (ctx->ret <= 0 || !process_wanted(pid_tgid >> 32))
		return 0;
	struct pt_regs *r = stack_top_regs(ctx->nr);
	if (!r)
		return 0;
	struct ht_conn_info *ci = data_conn(pid_tgid, ARG1(r));
	if (!ci)
		return 0;
	return capture_syscall(ci, ctx->ret, ARG2(r), ARG3(r), kind, direction, true);
}

static __always_inline int compat_data_exit(struct syscall_trace_exit *ctx, enum buffer_kind kind,
					    __u8 direction)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct syscall_args *stashed = bpf_map_lookup_elem(&stashed_args, &pid_tgid);
	if (!stashed)
		return compat_first_exit(ctx, pid_tgid, kind, direction);
	struct syscall_args args;
	if (!take_args(stashed, &args) || ctx->ret <= 0)
		return 0;
	__u64 key = (pid_tgid & 0xffffffff00000000ULL) | (__u32)args.fd;
	struct ht_conn_info *ci = bpf_map_lookup_elem(&conns, &key);
	if (!ci || ci->state >= HT_CONN_IGNORED || ci->tls)
		return 0;
	return capture_syscall(ci, ctx->ret, args.arg2, args.arg3, kind, direction, true);
}

/* Each data syscall: the fast program on exit, and the compat pair on entry and exit. */
#define DATA_SYSCALL(name, kind, direction)                                                              \
	SEC("?tracepoint/syscalls/sys_exit_" #name)                                                      \
	int exit_##name(struct syscall_trace_exit *ctx)                                                  \
	{                                                                                                \
		return fast_data(ctx->ret, kind, direction);                                             \
	}                                                                                                \
	SEC("?tracepoint/syscalls/sys_enter_" #name)                                                     \
	int compat_enter_##name(struct syscall_trace_enter *ctx)                                         \
	{                                                                                                \
		return compat_data_enter(ctx);                                                           \
	}                                                                                                \
	SEC("?tracepoint/syscalls/sys_exit_" #name)                                                      \
	int compat_exit_##name(struct syscall_trace_exit *ctx)                                           \
	{                                                                                                \
		return compat_data_exit(ctx, kind, direction);                                           \
	}

DATA_SYSCALL(read, BUF_PLAIN, HT_INGRESS)
DATA_SYSCALL(recvfrom, BUF_PLAIN, HT_INGRESS)
DATA_SYSCALL(write, BUF_PLAIN, HT_EGRESS)
DATA_SYSCALL(sendto, BUF_PLAIN, HT_EGRESS)
DATA_SYSCALL(readv, BUF_IOV, HT_INGRESS)
DATA_SYSCALL(writev, BUF_IOV, HT_EGRESS)
DATA_SYSCALL(recvmsg, BUF_MSG, HT_INGRESS)
DATA_SYSCALL(sendmsg, BUF_MSG, HT_EGRESS)

/* sendfile: its bytes never pass through user memory; a connection is classified by bytes we can see,
 * so sendfile only advances an HTTP connection's position. */
static __always_inline struct ht_conn_info *http_conn(__u64 pid_tgid, int fd)
{
	__u64 key = (pid_tgid & 0xffffffff00000000ULL) | (__u32)fd;
	struct ht_conn_info *ci = bpf_map_lookup_elem(&conns, &key);
	return ci && ci->state == HT_CONN_HTTP ? ci : NULL;
}

static __always_inline int sent_file(struct ht_conn_info *ci, long ret)
{
	if (ci->skipping & (1 << HT_EGRESS))
		return 0; /* the body of a response being skipped */
	send_not_copied(ci, HT_EGRESS, ci->pos[HT_EGRESS], ret, HT_DATA_NOT_VISIBLE);
	ci->pos[HT_EGRESS] += ret;
	return 0;
}

SEC("?tracepoint/syscalls/sys_exit_sendfile64")
int exit_sendfile(struct syscall_trace_exit *ctx)
{
	if (ctx->ret <= 0)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!process_wanted(pid_tgid >> 32))
		return 0;
	struct ht_conn_info *ci = http_conn(pid_tgid, TASK_ARG1(syscall_regs()));
	return ci ? sent_file(ci, ctx->ret) : 0;
}

SEC("?tracepoint/syscalls/sys_enter_sendfile64")
int compat_enter_sendfile(struct syscall_trace_enter *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!process_wanted(pid_tgid >> 32) || !http_conn(pid_tgid, ctx->args[0]))
		return 0;
	stash_args(pid_tgid, ctx->args[0], 0, 0);
	return 0;
}

SEC("?tracepoint/syscalls/sys_exit_sendfile64")
int compat_exit_sendfile(struct syscall_trace_exit *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct syscall_args args;
	if (!take_stashed(pid_tgid, &args) || ctx->ret <= 0)
		return 0;
	struct ht_conn_info *ci = http_conn(pid_tgid, args.fd);
	return ci ? sent_file(ci, ctx->ret) : 0;
}

static __always_inline int on_new_socket(int fd, __u8 role_hint)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!process_wanted(tgid))
		return 0;
	__u64 key = ((__u64)tgid << 32) | (__u32)fd;
	track(key, tgid, fd, role_hint);
	return 0;
}

/* accept's fd is its return value: one program serves both families. */
SEC("tracepoint/syscalls/sys_exit_accept")
int exit_accept(struct syscall_trace_exit *ctx)
{
	return ctx->ret < 0 ? 0 : on_new_socket(ctx->ret, HT_ROLE_SERVER);
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int exit_accept4(struct syscall_trace_exit *ctx)
{
	return ctx->ret < 0 ? 0 : on_new_socket(ctx->ret, HT_ROLE_SERVER);
}

/* A non-blocking connect that is still under way has succeeded as far as we are concerned. */
static __always_inline bool connected(long ret)
{
	return ret == 0 || ret == -EINPROGRESS;
}

SEC("?tracepoint/syscalls/sys_exit_connect")
int exit_connect(struct syscall_trace_exit *ctx)
{
	return connected(ctx->ret) ? on_new_socket(TASK_ARG1(syscall_regs()), HT_ROLE_CLIENT) : 0;
}

SEC("?tracepoint/syscalls/sys_enter_connect")
int compat_enter_connect(struct syscall_trace_enter *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!process_wanted(pid_tgid >> 32))
		return 0;
	stash_args(pid_tgid, ctx->args[0], 0, 0);
	return 0;
}

SEC("?tracepoint/syscalls/sys_exit_connect")
int compat_exit_connect(struct syscall_trace_exit *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct syscall_args args;
	if (!take_stashed(pid_tgid, &args))
		return 0;
	return connected(ctx->ret) ? on_new_socket(args.fd, HT_ROLE_CLIENT) : 0;
}

SEC("tracepoint/syscalls/sys_enter_close")
int enter_close(struct syscall_trace_enter *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 key = ((__u64)tgid << 32) | (__u32)ctx->args[0];
	struct ht_conn_info *ci = bpf_map_lookup_elem(&conns, &key);
	if (!ci)
		return 0;
	if (ci->open_sent) {
		struct ht_close_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (e) {
			e->hdr.type = HT_EVENT_CLOSE;
			e->hdr._pad0 = 0;
			e->hdr.ts_ns = bpf_ktime_get_ns();
			e->hdr.conn = ci->id;
			e->bytes[0] = ci->pos[0];
			e->bytes[1] = ci->pos[1];
			bpf_ringbuf_submit(e, wakeup_flag());
		} else {
			count_drop(HT_EVENT_CLOSE);
		}
	}
	bpf_map_delete_elem(&conns, &key);
	return 0;
}

/* ---- TLS: plaintext at the OpenSSL API, on the connection of the fd its syscalls use ------------
 * (BPF_KPROBE/BPF_KRETPROBE only unpack pt_regs: they serve uprobes as well.) */

/* (tgid, SSL *) -> fd, for SSL_read calls served from OpenSSL's buffer without a syscall. */
struct ssl_key {
	__u32 tgid;
	__u32 _pad;
	__u64 ssl;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ssl_key);
	__type(value, __s32);
} ssl_fds SEC(".maps");

static __always_inline int tls_enter(void *ssl, const void *buf, size_t *size_out, __u8 direction)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!process_wanted(pid_tgid >> 32))
		return 0;
	__u32 tid = pid_tgid;
	struct tls_call call = {
		.ssl = (__u64)ssl, .buf = (__u64)buf, .size_out = (__u64)size_out, .fd = -1, .direction = direction,
	};
	bpf_map_update_elem(&tls_calls, &tid, &call, BPF_ANY);
	return 0;
}

/* n bytes of plaintext at buf that a TLS library (OpenSSL, Go's crypto/tls) read or wrote on ci. From
 * now on the socket's own bytes are ciphertext and are not captured. */
static __always_inline int tls_plaintext(struct ht_conn_info *ci, long n, __u64 buf, __u8 direction, bool compat)
{
	if (!ci->tls) { /* the handshake made the socket look like non-HTTP: classify the plaintext instead */
		ci->tls = 1;
		/* Not IGNORED: that is for good (filtered out by --port, or not TCP), for TLS too. */
		if (ci->state == HT_CONN_NOT_HTTP)
			ci->state = HT_CONN_UNKNOWN;
		ci->tries = 0;
	}
	if (ci->state >= HT_CONN_IGNORED)
		return 0;
	return capture(ci, n, buf, 0, 0, direction, HT_DATA_TLS, compat);
}

static __always_inline int tls_exit(long rc, bool compat)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = pid_tgid, tgid = pid_tgid >> 32;
	struct tls_call *found = bpf_map_lookup_elem(&tls_calls, &tid);
	if (!found)
		return 0;
	struct tls_call call = *found;
	bpf_map_delete_elem(&tls_calls, &tid);

	long n = rc;
	if (call.size_out) { /* the _ex forms return 1 and the byte count through a pointer */
		size_t done = 0;
		if (rc != 1 || bpf_probe_read_user(&done, sizeof(done), (void *)call.size_out))
			return 0;
		n = done;
	}
	if (n <= 0)
		return 0;
	struct ssl_key key = {.tgid = tgid, .ssl = call.ssl};
	if (call.fd >= 0) {
		bpf_map_update_elem(&ssl_fds, &key, &call.fd, BPF_ANY);
	} else {
		__s32 *fd = bpf_map_lookup_elem(&ssl_fds, &key);
		if (!fd)
			return 0; /* no syscall seen for this SSL yet: nothing tells us its connection */
		call.fd = *fd;
	}
	struct ht_conn_info *ci = lookup_or_track(tgid, call.fd);
	if (!ci)
		return 0;
	return tls_plaintext(ci, n, call.buf, call.direction, compat);
}

SEC("uprobe")
int BPF_KPROBE(ssl_write_enter, void *ssl, const void *buf, int num)
{
	return tls_enter(ssl, buf, NULL, HT_EGRESS);
}

SEC("uprobe")
int BPF_KPROBE(ssl_write_ex_enter, void *ssl, const void *buf, size_t num, size_t *written)
{
	return tls_enter(ssl, buf, written, HT_EGRESS);
}

SEC("uprobe")
int BPF_KPROBE(ssl_read_enter, void *ssl, void *buf, int num)
{
	return tls_enter(ssl, buf, NULL, HT_INGRESS);
}

SEC("uprobe")
int BPF_KPROBE(ssl_read_ex_enter, void *ssl, void *buf, size_t num, size_t *readbytes)
{
	return tls_enter(ssl, buf, readbytes, HT_INGRESS);
}

/* The return probe copies the plaintext: one per family. */
SEC("?uretprobe")
int BPF_KRETPROBE(ssl_exit, int rc)
{
	return tls_exit(rc, false);
}

SEC("?uretprobe")
int BPF_KRETPROBE(compat_ssl_exit, int rc)
{
	return tls_exit(rc, true);
}

/* ---- Go's crypto/tls: plaintext at (*Conn).Write and (*Conn).Read --------------------------------
 * Uprobes at each function's entry and at every one of its RET instructions (user space finds them by
 * disassembling): never uretprobes, which rewrite a return address on a goroutine stack that Go moves
 * and walks. A call is keyed by (tgid, goroutine), not by thread: a Read that parks in the netpoller
 * resumes on another thread, and meanwhile other goroutines run on this one.
 *
 * Read is reported at its RET (buf[:n], when err is nil). Write is reported at its entry, all of b:
 * reported at its RET, a request's last bytes came out after the response that answered them, often
 * (measured: the writing goroutine returns ~200 us after its write syscall on a busy host, by which
 * time the peer has answered and the reader goroutine has returned). Write returns len(b) or an error
 * that breaks the connection, so what it was given is what was sent. */

/* Go's register ABI: GO_ARG1.., GO_RET1.., GO_G, GO_ARG_SPILL in arch.h. */

struct go_call_key {
	__u32 tgid;
	__u32 _pad;
	__u64 g;
};

struct go_tls_call {
	__u64 conn;
	__u64 buf;
	__u64 len;
	__u8 direction;
	__u8 _pad[7];
};

/* LRU: a call whose RET we never see (a panic unwinding through it) must not hold a slot forever. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct go_call_key);
	__type(value, struct go_tls_call);
} go_tls_calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64); /* inode number; 0: the default */
	__type(value, struct ht_go_offsets);
} go_offsets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HT_GO_ERRORS);
	__type(key, __u32);
	__type(value, __u64);
} go_tls_errors SEC(".maps");

static __always_inline void count_go_error(__u32 kind)
{
	__u64 *n = bpf_map_lookup_elem(&go_tls_errors, &kind);
	if (n)
		*n += 1;
}

/* The struct offsets of the current process's Go program (by its file's inode, else the default). */
static __always_inline struct ht_go_offsets *go_offsets_here(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 ino = BPF_CORE_READ(task, mm, exe_file, f_inode, i_ino);
	struct ht_go_offsets *o = bpf_map_lookup_elem(&go_offsets, &ino);
	if (!o) {
		ino = 0;
		o = bpf_map_lookup_elem(&go_offsets, &ino);
	}
	return o;
}

/* The socket fd behind a *tls.Conn: c.conn (net.Conn) -> *net.TCPConn -> *netFD -> pfd.Sysfd, at the
 * offsets of the running program's build. -1 (counted) when the chain does not end at a stream socket,
 * e.g. a conn that is not a *net.TCPConn; -1 (not counted) when the socket is closed already (Sysfd is
 * -1 then): the call fails without a byte sent (seen: Go's HTTP/2 transport closing the spare
 * connections of a dial race). */
static __always_inline int go_conn_fd(__u64 conn)
{
	struct ht_go_offsets *o = go_offsets_here();
	if (!o) {
		count_go_error(HT_GO_UNKNOWN_BINARY);
		return -1;
	}
	__u64 tcp_conn = 0, netfd = 0;
	__s64 family = 0, sotype = 0, sysfd = -1;
	if (bpf_probe_read_user(&tcp_conn, sizeof(tcp_conn), (void *)(conn + o->conn + 8)) ||
	    bpf_probe_read_user(&netfd, sizeof(netfd), (void *)(tcp_conn + o->tcpconn_fd)) ||
	    bpf_probe_read_user(&family, sizeof(family), (void *)(netfd + o->netfd_family)) ||
	    bpf_probe_read_user(&sotype, sizeof(sotype), (void *)(netfd + o->netfd_sotype)) ||
	    bpf_probe_read_user(&sysfd, sizeof(sysfd), (void *)(netfd + o->netfd_sysfd)) ||
	    (family != AF_INET && family != AF_INET6) || sotype != SOCK_STREAM || sysfd < -1 || sysfd > 0x7fffffff) {
		count_go_error(HT_GO_BAD_FD);
		return -1;
	}
	return sysfd;
}

static __always_inline int go_tls_report(__u32 tgid, struct go_tls_call *call, long n, bool compat)
{
	int fd = go_conn_fd(call->conn);
	if (fd < 0)
		return 0;
	struct ht_conn_info *ci = lookup_or_track(tgid, fd);
	if (!ci || !ci->sk) { /* not a TCP socket of this process: the offsets do not fit this program */
		count_go_error(HT_GO_BAD_FD);
		return 0;
	}
	return tls_plaintext(ci, n, call->buf, call->direction, compat);
}

static __always_inline int go_tls_enter(struct pt_regs *ctx, __u8 direction, bool compat)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!process_wanted(tgid))
		return 0;
	struct go_call_key key = {.tgid = tgid, .g = GO_G(ctx)};
	struct go_tls_call call = {
		.conn = GO_ARG1(ctx), .buf = GO_ARG2(ctx), .len = GO_ARG3(ctx), .direction = direction,
	};
	if (direction == HT_EGRESS) {
		/* A call that needs a bigger stack runs its prologue twice: report its bytes once. Not compared:
		 * buf, which the stack copy moves if it pointed into the stack. Every RET ends the call, so a
		 * second Write of this goroutine finds no entry left. */
		struct go_tls_call *prev = bpf_map_lookup_elem(&go_tls_calls, &key);
		if (prev && prev->direction == HT_EGRESS && prev->conn == call.conn && prev->len == call.len)
			return 0;
	}
	bpf_map_update_elem(&go_tls_calls, &key, &call, BPF_ANY);
	if (direction == HT_EGRESS && (long)call.len > 0)
		go_tls_report(tgid, &call, call.len, compat);
	return 0;
}

/* A Read that was already under way when the probes were attached (an idle keep-alive connection
 * waits in one): its entry was never seen, but where the program's Read spills its arguments on every
 * path (user space checked its code), they are still in their spill slots at the RET. */
static __always_inline bool go_read_args_spilled(struct pt_regs *ctx, __u32 tgid, struct go_tls_call *call)
{
	struct ht_go_offsets *o = go_offsets_here();
	if (!o || !o->read_args_spilled || !process_wanted(tgid))
		return false;
	if (bpf_probe_read_user(&call->conn, sizeof(call->conn), (void *)GO_ARG_SPILL(ctx, 0)) ||
	    bpf_probe_read_user(&call->buf, sizeof(call->buf), (void *)GO_ARG_SPILL(ctx, 1)))
		return false;
	call->direction = HT_INGRESS;
	return true;
}

static __always_inline int go_read_exit(struct pt_regs *ctx, bool compat)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct go_call_key key = {.tgid = tgid, .g = GO_G(ctx)};
	struct go_tls_call call = {};
	struct go_tls_call *found = bpf_map_lookup_elem(&go_tls_calls, &key);
	if (found) {
		call = *found;
		bpf_map_delete_elem(&go_tls_calls, &key);
		if (call.direction != HT_INGRESS)
			return 0;
	}
	long n = GO_RET1(ctx);
	if (n <= 0 || GO_RET2(ctx))
		return 0;
	if (!found && !go_read_args_spilled(ctx, tgid, &call))
		return 0;
	return go_tls_report(tgid, &call, n, compat);
}

/* Entries: Write reports, so it comes in both families; Read only remembers its arguments. */
SEC("?uprobe")
int go_write_enter(struct pt_regs *ctx)
{
	return go_tls_enter(ctx, HT_EGRESS, false);
}

SEC("?uprobe")
int compat_go_write_enter(struct pt_regs *ctx)
{
	return go_tls_enter(ctx, HT_EGRESS, true);
}

SEC("uprobe")
int go_read_enter(struct pt_regs *ctx)
{
	return go_tls_enter(ctx, HT_INGRESS, false);
}

/* At each RET of Write: the call is over (its bytes went out at the entry). */
SEC("uprobe")
int go_write_ret(struct pt_regs *ctx)
{
	struct go_call_key key = {.tgid = bpf_get_current_pid_tgid() >> 32, .g = GO_G(ctx)};
	bpf_map_delete_elem(&go_tls_calls, &key);
	return 0;
}

/* At each RET of Read: the bytes it read. */
SEC("?uprobe")
int go_read_ret(struct pt_regs *ctx)
{
	return go_read_exit(ctx, false);
}

SEC("?uprobe")
int compat_go_read_ret(struct pt_regs *ctx)
{
	return go_read_exit(ctx, true);
}
