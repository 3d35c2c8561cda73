/* The kernel/user contract: every struct and enum that crosses the ring buffer.
 *
 * Single source of truth. httptrace/events.py mirrors these with ctypes and a unit test checks the
 * mirror against the BTF of the built object, so change a field here and that test tells you where.
 * Fixed-width types and explicit padding only: the layout must not depend on the compiler.
 */
#ifndef HTTPTRACE_H
#define HTTPTRACE_H

#define HT_COMM_LEN 16
#define HT_CHUNK_SIZE (32 * 1024) /* payload bytes in one data event */
#define HT_MAX_IOV 1024           /* iovec entries walked per syscall (UIO_MAXIOV): the rest is not copied */

enum ht_event_type {
	HT_EVENT_OPEN = 1,  /* a connection was found to carry HTTP: addresses, comm, role hint */
	HT_EVENT_DATA = 2,  /* payload bytes of one direction at stream offset pos */
	HT_EVENT_CLOSE = 3, /* close() on a connection that had an open event */
};

enum ht_direction {
	HT_EGRESS = 0,  /* the traced process wrote / sent these bytes */
	HT_INGRESS = 1, /* the traced process read / received these bytes */
};

enum ht_role_hint {
	HT_ROLE_UNKNOWN = 0, /* found on first read/write: it was open before the tracer attached */
	HT_ROLE_SERVER = 1,  /* came from accept() */
	HT_ROLE_CLIENT = 2,  /* came from connect() */
};

enum ht_data_flags {
	HT_DATA_NOT_VISIBLE = 1, /* sendfile(): bytes left the socket but never passed through user memory */
	HT_DATA_TLS = 2,         /* plaintext seen inside a TLS library, not on the socket */
};

/* Identifies one connection for its whole life: (tgid, fd) is reused, tsid makes it unique. */
struct ht_conn_id {
	__u32 tgid;
	__s32 fd;
	__u64 tsid; /* bpf_ktime_get_ns() when the kernel agent first saw it */
};

struct ht_event_header {
	__u32 type; /* enum ht_event_type */
	__u32 _pad0;
	__u64 ts_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	struct ht_conn_id conn;
};

struct ht_open_event {
	struct ht_event_header hdr;
	__u16 family; /* AF_INET or AF_INET6 */
	__u16 local_port;
	__u16 remote_port;
	__u8 role_hint; /* enum ht_role_hint */
	__u8 tls;       /* 1: the payload of this connection is TLS plaintext from the TLS library */
	__u8 local_addr[16]; /* 4 bytes used for AF_INET */
	__u8 remote_addr[16];
	char comm[HT_COMM_LEN];
	__u64 cgroup_id; /* bpf_get_current_cgroup_id(): the inode of the process's cgroup v2 directory */
};

struct ht_data_event {
	struct ht_event_header hdr;
	__u64 pos;        /* offset of data[0] in this direction's byte stream */
	__u32 len;        /* payload bytes in data[] */
	__u32 not_copied; /* bytes right after this payload that were not copied (cap, sendfile) */
	__u8 direction;   /* enum ht_direction */
	__u8 flags;       /* enum ht_data_flags */
	__u8 _pad0[6];
	__u8 data[HT_CHUNK_SIZE]; /* only len bytes are sent */
};

struct ht_close_event {
	struct ht_event_header hdr;
	__u64 bytes[2]; /* stream length per direction at close: pos a reader should have reached */
};

enum ht_conn_state {
	HT_CONN_UNKNOWN = 0, /* a TCP socket not classified yet */
	HT_CONN_HTTP = 1,    /* its first bytes were an HTTP/1 start line: every byte is reported */
	HT_CONN_IGNORED = 2, /* not TCP or filtered out, for good: one map lookup per syscall from now on */
	HT_CONN_NOT_HTTP = 3, /* a TCP socket whose first bytes were not HTTP: a TLS handshake may be, and
			       * the plaintext that follows makes it classifiable again */
};

/* Value of the conns map, keyed by (tgid << 32 | fd). User space reads it to close the connections of
 * processes that exited without close(). */
struct ht_conn_info {
	struct ht_conn_id id;
	__u64 pos[2]; /* bytes reported so far per direction, i.e. the next event's pos */
	__u64 sk;     /* struct sock *, read for addresses when the open event is sent */
	__u8 state;   /* enum ht_conn_state */
	__u8 role_hint;
	__u8 open_sent;
	__u8 tries;
	__u8 tls;     /* plaintext comes from TLS library probes; the socket's own bytes are ciphertext */
	__u8 http1;   /* classified by an HTTP/1 start line: under overload it sheds whole messages */
	__u8 skipping; /* bit (1 << direction): the message under way in that direction is being skipped */
	__u8 _pad0;
	__u32 responses_to_skip; /* requests skipped whose responses are still to come (and be skipped) */
	__u32 _pad1;
};

/* Under overload, HTTP/1 messages skipped whole in the kernel, counted per CPU (map skipped). */
enum ht_skip {
	HT_SKIPPED_REQUESTS = 0,
	HT_SKIPPED_RESPONSES = 1,
	HT_SKIPS = 2,
};

/* Go's crypto/tls: the socket's fd is found from the tls.Conn through the program's own structs. The
 * go_offsets map holds their byte offsets per executable, keyed by the inode number of its file
 * (mm->exe_file; the device is left out: btrfs and overlayfs report another one to stat()); key 0
 * holds the offsets every supported Go release uses, for a program whose inode is not found. */
struct ht_go_offsets {
	__u32 conn;         /* tls.Conn.conn, a net.Conn interface: its data word (+8) is the *net.TCPConn */
	__u32 tcpconn_fd;   /* net.TCPConn.conn.fd: the *net.netFD */
	__u32 netfd_sysfd;  /* netFD.pfd.Sysfd: the fd (int) */
	__u32 netfd_family; /* netFD.family (int): AF_INET or AF_INET6, checked */
	__u32 netfd_sotype; /* netFD.sotype (int): SOCK_STREAM, checked */
	__u32 read_args_spilled; /* 1: Read stores its arguments in their spill slots on every path, so a
				  * Read that began before the probes were attached is found at its RET */
};

/* Go TLS plaintext the kernel could not attribute to a socket, counted per CPU (map go_tls_errors). */
enum ht_go_error {
	HT_GO_UNKNOWN_BINARY = 0, /* neither the program's inode nor the default (0) is in go_offsets */
	HT_GO_BAD_FD = 1,         /* the conn did not lead to a TCP socket of that process: dropped */
	HT_GO_ERRORS = 2,
};

/* Read-only configuration, set by user space in .rodata before load. */
struct ht_config {
	__u32 self_tgid;    /* the tracer itself is never traced */
	__u32 filter_tgids; /* 1: only tgids present in the target_tgids map */
	__u32 filter_ports; /* 1: only connections with a local or remote port in target_ports */
	__u32 filter_comm;  /* 1: only processes whose comm equals comm */
	__u32 tls;          /* 1: TLS library probes are attached: syscalls made inside them carry ciphertext */
	__u32 _pad0;
	__u64 max_copy;     /* payload bytes copied per syscall; the rest is reported as not_copied */
	__u64 wakeup_bytes; /* wake the reader only when this much is waiting (it also polls on a timer);
			     * 0: the kernel's default, a wake-up whenever the reader has caught up */
	__u64 shed_bytes;   /* while more than this waits in the ring, HTTP/1 connections skip new exchanges
			     * whole; 0: never (bytes are then dropped when the ring is full) */
	char comm[HT_COMM_LEN];
};

#endif
