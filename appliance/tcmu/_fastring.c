/*
 * appliance.tcmu._fastring: the ring thread's compiled fast path.
 *
 * One call, scan(), walks the TCMU command ring from the parse cursor and
 * takes the longest run of entries it can handle without the interpreter:
 *
 *   - PAD entries (skipped, as the kernel skips them);
 *   - plain READ(10/16): the bytes are read from the primary with preadv()
 *     straight into the command's data-area pages, and the GOOD response is
 *     written into the command's own slot;
 *   - plain WRITE(10/16) without FUA: the payload is gathered into one bytes
 *     object and handed back, and a GOOD response is written into the
 *     command's own slot.  The caller runs the writes through the engine
 *     before it publishes the tail, and rewrites the response of any write the
 *     engine refuses (CommandRing.fail_served).
 *
 * A run is reads or writes, never both, so a read never overtakes an earlier
 * write of the same poll.  Anything else -- another opcode, a bit outside the
 * usage bitmap, a range past the capacity, a length of 0 or above the
 * transfer limit, a malformed entry, an id already live, a failed read --
 * ends the run *before* that entry, and the Python ring parses it as it
 * always did, producing the exact error.  The checks are the ones of
 * appliance/scsi/block_io.py (_plain, _fits) and appliance/tcmu/ring.py
 * (_parse, _parse_cmd); tests/unit/daemon/test_fastring.py runs both paths on
 * the same rings and compares every byte of the mapping.
 *
 * Responses go into the command's own slot, with its own cmd_id, exactly as
 * the Python ring writes them without slot stealing; the caller keeps the run
 * as one slot that the tail passes only at the next flush (or, with a worker's
 * command waiting before it, splits it so that slot stealing applies).  The
 * run's ids go into the ring's live table until then.  Every field of an
 * entry is read once from the shared mapping.  The GIL is released around
 * the reads, never while a Python object is touched.
 *
 * Layout (linux/target_core_user.h, mailbox version 2; see layout.py):
 * entry header {u32 len_op, u16 cmd_id, u8 kflags, u8 uflags}; request
 * {u32 iov_cnt @8, u32 bidi_cnt @12, u64 cdb_off @24, iovecs @48 (16 each)};
 * response {u8 status @8, u32 read_len @12, sense[96] @16}.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <poll.h>
#include <sys/uio.h>
#include <unistd.h>

#define OP_MASK 0x7u
#define OP_PAD 0u
#define OP_CMD 1u
#define CMD_ENTRY_SIZE 112u
#define IOV_OFFSET 48u
#define UFLAG_READ_LEN 0x2u
#define FUA_BIT 0x08u
#define STATUS_BUSY 0x08u

#define MODE_READS 1
#define MODE_WRITES 2

#define RUN_NONE 0
#define RUN_READS 1
#define RUN_WRITES 2

#define MAX_IOV 64 /* preadv batch; longer lists are read in several calls */

static inline uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t le64(const uint8_t *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static inline uint64_t be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* One read to do: where its response goes and where its bytes go. */
typedef struct {
    uint64_t slot;  /* mapping offset of the entry */
    uint64_t end;   /* ring position after the entry */
    uint64_t off;   /* byte offset in the primary */
    uint64_t len;   /* bytes to read */
    uint32_t iov_first; /* index into the iovec pool */
    uint32_t iov_n;
    uint16_t cmd_id;
} read_job;

/* The run's reads, kept between parsing (GIL held) and I/O (GIL released). */
typedef struct {
    read_job *jobs;
    size_t n, cap;
    struct iovec *iov;
    size_t iov_n, iov_cap;
    uint64_t *wslots; /* mapping offsets of the run's writes */
    size_t wn, wcap;
    uint16_t *wids; /* their cmd_ids */
    size_t widcap;
} read_plan;

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *q = PyMem_Realloc(*p, c * elem);
    if (q == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *p = q;
    *cap = c;
    return 0;
}

/* preadv until ``len`` bytes are in ``iov``; a short file reads as zeros (the
 * engine's rule for a primary shorter than the volume).  0, or errno. */
static int read_all(int fd, struct iovec *iov, size_t n, uint64_t off, uint64_t len)
{
    size_t i = 0;
    size_t skip = 0; /* bytes of iov[i] already filled */
    while (len > 0 && i < n) {
        struct iovec batch[MAX_IOV];
        size_t k = 0;
        uint64_t want = 0;
        for (size_t j = i; j < n && k < MAX_IOV && want < len; j++, k++) {
            size_t base = j == i ? skip : 0;
            uint64_t sz = iov[j].iov_len - base;
            if (sz > len - want)
                sz = len - want;
            batch[k].iov_base = (char *)iov[j].iov_base + base;
            batch[k].iov_len = (size_t)sz;
            want += sz;
        }
        ssize_t got = preadv(fd, batch, (int)k, (off_t)off);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (got == 0) { /* end of file: the rest reads as zeros */
            for (size_t j = 0; j < k; j++)
                memset(batch[j].iov_base, 0, batch[j].iov_len);
            got = (ssize_t)want;
        }
        off += (uint64_t)got;
        len -= (uint64_t)got;
        /* advance (i, skip) by got bytes, past filled (or empty) iovecs */
        uint64_t left = (uint64_t)got;
        while (i < n) {
            uint64_t room = iov[i].iov_len - skip;
            if (left < room) {
                skip += (size_t)left;
                break;
            }
            left -= room;
            i++;
            skip = 0;
        }
    }
    return 0;
}

static void write_response(uint8_t *entry, uint32_t read_len, int with_read_len)
{
    memset(entry + 8, 0, CMD_ENTRY_SIZE - 8); /* status GOOD, no sense */
    if (with_read_len) {
        entry[12] = (uint8_t)read_len;
        entry[13] = (uint8_t)(read_len >> 8);
        entry[14] = (uint8_t)(read_len >> 16);
        entry[15] = (uint8_t)(read_len >> 24);
    }
    entry[7] = with_read_len ? UFLAG_READ_LEN : 0; /* uflags */
}

PyDoc_STRVAR(scan_doc,
"scan(ring, cmdr_off, cmdr_size, pos, head, data_off, read_len, live,\n"
"     fd, block_size, size, max_blocks, mode) -> (end, count, writes)\n"
"\n"
"Serve the longest run of fast entries from ring position ``pos`` (see the\n"
"module comment).  ``ring``: the writable mapping; ``read_len``: the kernel\n"
"honours rsp.read_len; ``live``: the ring's live command ids (such an id is\n"
"not fast); ``fd``: the primary (-1: no reads); ``size``: bytes;\n"
"``max_blocks``: the transfer limit in blocks; ``mode``: 1 reads, 2 writes.\n"
"Returns the ring position after the run (``pos`` if nothing was taken; it\n"
"may equal ``cmdr_size``), the number of commands in it, for a run of\n"
"writes a list of ``(slot, offset, payload)`` (``slot``: the entry's\n"
"mapping offset) else None, and the commands' ids (u16 each, little\n"
"endian), which are also put into ``live`` (the ring drops them when it\n"
"publishes the run).");

/* The ring and the device, as one poll sees them. */
typedef struct {
    uint8_t *map;
    uint64_t map_size, cmdr_off, cmdr_size, data_off, size, max_blocks;
    unsigned long block_size;
    int with_read_len, fd;
    PyObject *live;
} ring_ctx;

/* What take_run() took: the ring position after it, how many commands, the
 * writes (a list, or NULL) and the ids (bytes, or NULL unless mark_live). */
typedef struct {
    uint64_t end;
    Py_ssize_t count;
    PyObject *writes;
    PyObject *ids;
    uint64_t *wslots; /* the writes' mapping offsets (PyMem; the caller frees) */
} run_out;

/* The longest run of fast entries from ``pos`` (the module comment), answered
 * in their slots.  ``mark_live``: the ids go into the live table and come back
 * as bytes (the caller publishes later); else the caller publishes at once.
 * 0, or -1 with a Python exception (nothing answered then). */
static int take_run(ring_ctx *c, uint64_t pos, uint64_t head, int mode, int mark_live, run_out *r)
{
    uint8_t *map = c->map;
    uint64_t map_size = c->map_size, cmdr_off = c->cmdr_off, cmdr_size = c->cmdr_size;
    uint64_t data_off = c->data_off, size = c->size, max_blocks = c->max_blocks;
    unsigned long block_size = c->block_size;
    int with_read_len = c->with_read_len, fd = c->fd;
    PyObject *live = c->live;
    PyObject *writes = NULL, *ids = NULL;
    int rc = -1;
    read_plan plan = {0};
    uint64_t start_pos = pos;
    Py_ssize_t count = 0;
    int run = RUN_NONE;
    uint64_t seen[65536 / 64]; /* ids taken in this run */
    memset(seen, 0, sizeof seen);

    if (fd < 0)
        mode &= ~MODE_READS;

    while (pos != head && pos < cmdr_size) {
        uint8_t *e = map + cmdr_off + pos;
        uint32_t len_op = le32(e);
        uint32_t op = len_op & OP_MASK, length = len_op & ~OP_MASK;
        uint64_t room = (head > pos ? head : cmdr_size) - pos;
        if (length == 0 || length > room)
            break; /* the Python ring resynchronises it */
        if (op == OP_PAD) {
            pos += length;
            continue;
        }
        if (op != OP_CMD || length < CMD_ENTRY_SIZE)
            break;
        unsigned cmd_id = (unsigned)e[4] | (unsigned)e[5] << 8;
        if (cmd_id == 0 || seen[cmd_id >> 6] >> (cmd_id & 63) & 1)
            break; /* the Python ring voids a repeated id */
        PyObject *key = PyLong_FromUnsignedLong(cmd_id);
        if (key == NULL)
            goto out;
        int dup = PyDict_Contains(live, key);
        Py_DECREF(key);
        if (dup < 0)
            goto out;
        if (dup)
            break;
        uint64_t iov_cnt = le32(e + 8), bidi_cnt = le32(e + 12), cdb_off = le64(e + 24);
        uint64_t start = cmdr_off + pos, end = start + length;
        uint64_t iov_end = IOV_OFFSET + 16 * (iov_cnt + bidi_cnt);
        if (bidi_cnt != 0 || iov_end > length || cdb_off < start + iov_end || cdb_off >= end)
            break;
        const uint8_t *cdb = map + cdb_off;
        uint8_t opcode = cdb[0];
        int is_read = opcode == 0x28 || opcode == 0x88;
        int is_write = opcode == 0x2A || opcode == 0x8A;
        if (!((is_read && (mode & MODE_READS)) || (is_write && (mode & MODE_WRITES))))
            break;
        if ((run == RUN_READS && !is_read) || (run == RUN_WRITES && !is_write))
            break;
        unsigned cdb_len = opcode & 0x80 ? 16 : 10;
        if (cdb_len > end - cdb_off)
            break;
        uint8_t reserved = is_read ? 0xE1 : 0xE5; /* RDPROTECT/WRPROTECT, obsolete bit 0 */
        if (cdb[1] & reserved || (is_write && cdb[1] & FUA_BIT))
            break;
        uint64_t lba, blocks;
        if (cdb_len == 16) {
            if (cdb[14] & 0xC0 || cdb[15])
                break;
            lba = be(cdb + 2, 8);
            blocks = be(cdb + 10, 4);
        } else {
            if (cdb[6] & 0xC0 || cdb[9])
                break;
            lba = be(cdb + 2, 4);
            blocks = be(cdb + 7, 2);
        }
        uint64_t capacity = size / block_size;
        if (blocks == 0 || blocks > max_blocks || lba > capacity || blocks > capacity - lba)
            break;
        uint64_t n = blocks * block_size, have = 0;
        /* The iovecs are read once, checked and kept (no second fetch from the
         * shared page that could see other values). */
        if (grow((void **)&plan.iov, &plan.iov_cap, plan.iov_n + iov_cnt, sizeof(struct iovec)) < 0)
            goto out;
        size_t first_iov = plan.iov_n;
        int bad = 0;
        for (uint64_t i = 0; i < iov_cnt; i++) {
            uint64_t base = le64(e + IOV_OFFSET + 16 * i), sz = le64(e + IOV_OFFSET + 16 * i + 8);
            if (base < data_off || base > map_size || sz > map_size - base) {
                bad = 1;
                break;
            }
            plan.iov[plan.iov_n].iov_base = map + base;
            plan.iov[plan.iov_n].iov_len = (size_t)sz;
            plan.iov_n++;
            have += sz;
        }
        if (bad || have < n) {
            plan.iov_n = first_iov;
            break;
        }

        if (is_write) {
            PyObject *payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
            if (payload == NULL)
                goto out;
            char *dst = PyBytes_AS_STRING(payload);
            uint64_t got = 0;
            for (size_t i = first_iov; i < plan.iov_n && got < n; i++) {
                uint64_t sz = plan.iov[i].iov_len;
                if (sz > n - got)
                    sz = n - got;
                memcpy(dst + got, plan.iov[i].iov_base, (size_t)sz);
                got += sz;
            }
            plan.iov_n = first_iov; /* copied: not needed any more */
            PyObject *item = Py_BuildValue("(KKN)", (unsigned long long)start,
                                           (unsigned long long)(lba * block_size), payload);
            if (item == NULL)
                goto out;
            if (writes == NULL && (writes = PyList_New(0)) == NULL) {
                Py_DECREF(item);
                goto out;
            }
            int rc = PyList_Append(writes, item);
            Py_DECREF(item);
            if (rc < 0 || grow((void **)&plan.wslots, &plan.wcap, plan.wn + 1, sizeof(uint64_t)) < 0 ||
                grow((void **)&plan.wids, &plan.widcap, plan.wn + 1, sizeof(uint16_t)) < 0)
                goto out;
            plan.wids[plan.wn] = (uint16_t)cmd_id;
            plan.wslots[plan.wn++] = start; /* answered once nothing can fail */
            run = RUN_WRITES;
        } else {
            if (grow((void **)&plan.jobs, &plan.cap, plan.n + 1, sizeof(read_job)) < 0)
                goto out;
            read_job *job = &plan.jobs[plan.n++];
            job->slot = start;
            job->end = pos + length;
            job->off = lba * block_size;
            job->len = n;
            job->iov_first = (uint32_t)first_iov;
            job->iov_n = (uint32_t)(plan.iov_n - first_iov);
            job->cmd_id = (uint16_t)cmd_id;
            run = RUN_READS;
        }
        seen[cmd_id >> 6] |= 1ull << (cmd_id & 63);
        count++;
        pos += length;
    }

    size_t done = plan.n;
    if (plan.n) {
        /* The reads, without the GIL; the run ends before the first that fails
         * (the Python path reads it again and reports the error). */
        int err = 0;
        done = 0;
        Py_BEGIN_ALLOW_THREADS
        for (; done < plan.n; done++) {
            read_job *job = &plan.jobs[done];
            err = read_all(fd, plan.iov + job->iov_first, job->iov_n, job->off, job->len);
            if (err)
                break;
            /* Beyond the transfer length: zeros, unless read_len tells the kernel. */
            if (!with_read_len) {
                uint64_t left = job->len;
                for (uint32_t i = 0; i < job->iov_n; i++) {
                    struct iovec *v = &plan.iov[job->iov_first + i];
                    if (left >= v->iov_len) {
                        left -= v->iov_len;
                    } else {
                        memset((char *)v->iov_base + left, 0, v->iov_len - (size_t)left);
                        left = 0;
                    }
                }
            }
        }
        Py_END_ALLOW_THREADS
        if (err) { /* the run ends before the failed read */
            pos = done ? plan.jobs[done - 1].end : start_pos;
            count = (Py_ssize_t)done;
        }
    }

    /* The run's ids become live (the ring forgets them when it publishes the
     * run): a repeated id in a later entry is then voided by either path.
     * All or nothing, before any response is written. */
    if (mark_live) {
        ids = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(2 * (size_t)count));
        if (ids == NULL)
            goto out;
        uint8_t *idp = (uint8_t *)PyBytes_AS_STRING(ids);
        for (Py_ssize_t i = 0; i < count; i++) {
            uint16_t id = run == RUN_WRITES ? plan.wids[i] : plan.jobs[i].cmd_id;
            idp[2 * i] = (uint8_t)id;
            idp[2 * i + 1] = (uint8_t)(id >> 8);
            PyObject *key = PyLong_FromUnsignedLong(id);
            int bad = key == NULL ? -1 : PyDict_SetItem(live, key, Py_None);
            Py_XDECREF(key);
            if (bad < 0) {
                PyObject *type, *value, *tb;
                PyErr_Fetch(&type, &value, &tb);
                for (Py_ssize_t j = 0; j < i; j++) {
                    PyObject *k = PyLong_FromUnsignedLong(idp[2 * j] | idp[2 * j + 1] << 8);
                    if (k == NULL || PyDict_DelItem(live, k) < 0)
                        PyErr_Clear();
                    Py_XDECREF(k);
                }
                PyErr_Restore(type, value, tb);
                goto out;
            }
        }
    }
    for (size_t i = 0; i < done; i++)
        write_response(map + plan.jobs[i].slot, (uint32_t)plan.jobs[i].len, with_read_len);
    for (size_t i = 0; i < plan.wn; i++)
        write_response(map + plan.wslots[i], 0, 0);
    if (run != RUN_WRITES)
        Py_CLEAR(writes);
    r->end = pos;
    r->count = count;
    r->writes = writes;
    r->ids = ids;
    writes = ids = NULL;
    if (run == RUN_WRITES) {
        r->wslots = plan.wslots;
        plan.wslots = NULL;
    }
    rc = 0;

out:
    Py_XDECREF(writes);
    Py_XDECREF(ids);
    PyMem_Free(plan.jobs);
    PyMem_Free(plan.iov);
    PyMem_Free(plan.wslots);
    PyMem_Free(plan.wids);
    return rc;
}

/* The geometry checks both entry points make.  0, or -1 with ValueError. */
static int check_ctx(const ring_ctx *c, uint64_t pos)
{
    if (!PyDict_Check(c->live) || c->block_size == 0 || c->cmdr_off + c->cmdr_size > c->map_size ||
        pos >= c->cmdr_size || c->data_off > c->map_size) {
        PyErr_SetString(PyExc_ValueError, "bad ring geometry or arguments");
        return -1;
    }
    return 0;
}

/* The ring and device arguments both entry points take. */
static void fill_ctx(ring_ctx *c, Py_buffer *buf, uint64_t cmdr_off, uint64_t cmdr_size,
                     uint64_t data_off, uint64_t size, uint64_t max_blocks)
{
    c->map = buf->buf;
    c->map_size = (uint64_t)buf->len;
    c->cmdr_off = cmdr_off;
    c->cmdr_size = cmdr_size;
    c->data_off = data_off;
    c->size = size;
    c->max_blocks = max_blocks;
}

static PyObject *scan(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    ring_ctx c;
    unsigned long long cmdr_off, cmdr_size, pos, head, data_off, size, max_blocks;
    int mode;
    if (!PyArg_ParseTuple(args, "w*KKKKKpOikKKi", &buf, &cmdr_off, &cmdr_size, &pos, &head,
                          &data_off, &c.with_read_len, &c.live, &c.fd, &c.block_size, &size,
                          &max_blocks, &mode))
        return NULL;
    fill_ctx(&c, &buf, cmdr_off, cmdr_size, data_off, size, max_blocks);
    PyObject *result = NULL;
    run_out r = {0};
    if (check_ctx(&c, pos) == 0 && head >= cmdr_size)
        PyErr_SetString(PyExc_ValueError, "bad ring geometry or arguments");
    else if (!PyErr_Occurred() && take_run(&c, pos, head, mode, 1, &r) == 0) {
        result = Py_BuildValue("(KnOO)", (unsigned long long)r.end, r.count,
                               r.writes ? r.writes : Py_None, r.ids);
        Py_XDECREF(r.writes);
        Py_XDECREF(r.ids);
        PyMem_Free(r.wslots);
    }
    PyBuffer_Release(&buf);
    return result;
}


/* Why serve() returned. */
#define SERVE_TIMEOUT 0 /* nothing came in timeout_ms */
#define SERVE_WAKE 1    /* the wake fd is readable (left for the caller to drain) */
#define SERVE_ENTRIES 2 /* an entry at the tail needs the Python path */
#define SERVE_RESET 3   /* cmd_tail is not ours any more: the ring was reset */
#define SERVE_ERROR 4   /* poll, the event read or the kick failed (errno) */
#define SERVE_EXCEPTION 5 /* state(), on_writes() or kick() raised (the exception) */

/* A small fd or a Python object's int value; -1 otherwise (no exception). */
static int as_fd(PyObject *o)
{
    if (!PyLong_Check(o))
        return -1;
    long v = PyLong_AsLong(o);
    if (v < 0 || v > 0x7fffffff) {
        PyErr_Clear();
        return -1;
    }
    return (int)v;
}

PyDoc_STRVAR(serve_doc,
"serve(ring, cmdr_off, cmdr_size, tail, data_off, read_len, live, state,\n"
"      on_writes, block_size, size, max_blocks, head_off, tail_off, uio_fd,\n"
"      wake_fd, kick, timeout_ms)\n"
"    -> (reason, tail, served, busy, kicks, errno, exception)\n"
"\n"
"The ring thread's loop while the ring holds nothing parsed and unpublished\n"
"(tail = parse cursor, nothing live): wait for the uio event (or the wake\n"
"fd), then answer the run of plain READs (or plain WRITEs) at the tail in\n"
"place and publish it at once (cmd_tail, kick), and again, until something\n"
"needs Python.  ``state()`` is asked before every run: ``(fd, writes)``,\n"
"the primary's fd for direct reads (-1: reads go the Python way) and\n"
"whether plain writes may go this way (write cache on, writable LUN).\n"
"``on_writes(writes)`` runs a run of writes ((slot, offset, payload) each,\n"
"answered GOOD in their slots) through the engine before the run is\n"
"published, rewriting the answer of any write that failed; a callable it\n"
"returns is called, without arguments, once the run is published and kicked\n"
"(even if the kick failed); ``kick`` is the\n"
"uio fd to write to, or a callable.  Returns why it stopped (SERVE_*), the\n"
"new tail (also stored in the mailbox), the commands answered GOOD (or as\n"
"on_writes rewrote them), those answered BUSY because on_writes raised,\n"
"the kicks made, an errno for SERVE_ERROR and the exception for\n"
"SERVE_EXCEPTION (raised by state(), on_writes(), kick() or what\n"
"on_writes() returned, the first of them; the runs\n"
"before it stay published).  The GIL is released while it waits, reads\n"
"and kicks.");

static PyObject *serve(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    ring_ctx c;
    unsigned long long cmdr_off, cmdr_size, tail, data_off, size, max_blocks, head_off, tail_off;
    int uio_fd, wake_fd, timeout_ms;
    PyObject *state, *kick, *on_writes;
    if (!PyArg_ParseTuple(args, "w*KKKKpOOOkKKKKiiOi", &buf, &cmdr_off, &cmdr_size, &tail,
                          &data_off, &c.with_read_len, &c.live, &state, &on_writes,
                          &c.block_size, &size, &max_blocks, &head_off, &tail_off, &uio_fd,
                          &wake_fd, &kick, &timeout_ms))
        return NULL;
    fill_ctx(&c, &buf, cmdr_off, cmdr_size, data_off, size, max_blocks);
    c.fd = -1;
    PyObject *result = NULL;
    int kick_fd = as_fd(kick);
    if (check_ctx(&c, tail) < 0)
        goto done;
    if (head_off + 4 > c.map_size || tail_off + 4 > c.map_size || head_off % 4 || tail_off % 4 ||
        (kick_fd < 0 && !PyCallable_Check(kick)) || !PyCallable_Check(state) ||
        !PyCallable_Check(on_writes)) {
        PyErr_SetString(PyExc_ValueError, "bad mailbox offsets, kick, state or on_writes");
        goto done;
    }
    uint32_t *head_p = (uint32_t *)(c.map + head_off), *tail_p = (uint32_t *)(c.map + tail_off);
    int reason = SERVE_ENTRIES, err = 0;
    PyObject *exc = NULL;
    Py_ssize_t served = 0, kicks = 0, busy = 0;
    for (;;) {
        if (__atomic_load_n(tail_p, __ATOMIC_ACQUIRE) != (uint32_t)tail) {
            reason = SERVE_RESET;
            break;
        }
        uint64_t head = __atomic_load_n(head_p, __ATOMIC_ACQUIRE);
        if (head != tail) {
            if (head >= cmdr_size)
                break; /* the Python ring reports the bad index */
            /* What may go the fast way now: (the primary's fd or -1, writes
             * allowed); asked before every run, as the scan path asks per poll. */
            PyObject *now = PyObject_CallNoArgs(state);
            if (now == NULL)
                goto failed;
            int fd_now = -1, writes_ok = 0;
            if (!PyArg_ParseTuple(now, "ip;state() must give (fd, writes)", &fd_now, &writes_ok)) {
                Py_DECREF(now);
                goto failed;
            }
            Py_DECREF(now);
            c.fd = fd_now < 0 ? -1 : fd_now;
            /* Without an fd (a restore began) reads go the Python way. */
            int mode = (c.fd >= 0 ? MODE_READS : 0) | (writes_ok ? MODE_WRITES : 0);
            run_out r = {0};
            if (mode == 0)
                break;
            if (take_run(&c, tail, head, mode, 0, &r) < 0)
                goto failed;
            if (r.end == tail)
                break; /* not a fast entry: the Python path */
            PyObject *etype = NULL, *evalue = NULL, *etb = NULL; /* on_writes() raised */
            PyObject *then = NULL; /* what on_writes() left to do once published */
            if (r.writes != NULL) {
                /* The engine writes them (and rewrites the answer of any it
                 * refuses) before the tail passes them.  If it raises, which
                 * it should not, every write of the run is answered BUSY:
                 * not acknowledged, the initiator sends it again (the
                 * entries cannot be parsed again: the answers overwrote
                 * the requests).  The slots are the scan's own record, not
                 * the list the callback saw.  A callable it returns is
                 * called once the answers are published and kicked. */
                PyObject *ok = PyObject_CallOneArg(on_writes, r.writes);
                if (ok == NULL) {
                    PyErr_Fetch(&etype, &evalue, &etb);
                    for (Py_ssize_t i = 0; i < r.count; i++) {
                        write_response(c.map + r.wslots[i], 0, 0);
                        c.map[r.wslots[i] + 8] = STATUS_BUSY;
                    }
                    busy += r.count;
                } else if (ok != Py_None && PyCallable_Check(ok)) {
                    then = ok;
                    ok = NULL;
                }
                Py_XDECREF(ok);
                Py_DECREF(r.writes);
                PyMem_Free(r.wslots);
            }
            tail = r.end % cmdr_size;
            /* One aligned 4-byte store after every response byte. */
            __atomic_store_n(tail_p, (uint32_t)tail, __ATOMIC_RELEASE);
            int kick_errno = 0;
            PyObject *ktype = NULL, *kvalue = NULL, *ktb = NULL; /* kick() or then() raised */
            if (r.count) {
                if (etype == NULL) /* (BUSY answers are counted apart) */
                    served += r.count;
                kicks++;
                if (kick_fd >= 0) {
                    uint32_t one = 1;
                    ssize_t k;
                    Py_BEGIN_ALLOW_THREADS
                    do
                        k = write(kick_fd, &one, sizeof one);
                    while (k < 0 && errno == EINTR);
                    Py_END_ALLOW_THREADS
                    if (k < 0)
                        kick_errno = errno;
                } else {
                    PyObject *k = PyObject_CallNoArgs(kick);
                    if (k == NULL)
                        PyErr_Fetch(&ktype, &kvalue, &ktb);
                    Py_XDECREF(k);
                }
            }
            if (then != NULL) { /* always, even after a failed kick */
                PyObject *t = PyObject_CallNoArgs(then);
                Py_DECREF(then);
                if (t == NULL) {
                    if (ktype == NULL)
                        PyErr_Fetch(&ktype, &kvalue, &ktb);
                    else
                        PyErr_Clear();
                }
                Py_XDECREF(t);
            }
            /* The first failure is the one to report: on_writes(), the kick, then(). */
            if (etype != NULL) {
                Py_XDECREF(ktype);
                Py_XDECREF(kvalue);
                Py_XDECREF(ktb);
                PyErr_Restore(etype, evalue, etb);
                goto failed;
            }
            if (kick_errno) {
                Py_XDECREF(ktype);
                Py_XDECREF(kvalue);
                Py_XDECREF(ktb);
                err = kick_errno;
                reason = SERVE_ERROR;
                break;
            }
            if (ktype != NULL) {
                PyErr_Restore(ktype, kvalue, ktb);
                goto failed;
            }
            continue; /* more may have come meanwhile */
        }
        struct pollfd p[2] = {{uio_fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
        int n;
        Py_BEGIN_ALLOW_THREADS
        n = poll(p, wake_fd >= 0 ? 2 : 1, timeout_ms);
        Py_END_ALLOW_THREADS
        if (n < 0) {
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0)
                    goto failed;
                continue;
            }
            err = errno;
            reason = SERVE_ERROR;
            break;
        }
        if (n == 0) {
            reason = SERVE_TIMEOUT;
            break;
        }
        if (wake_fd >= 0 && p[1].revents) {
            reason = SERVE_WAKE;
            break;
        }
        if (p[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
            err = EIO;
            reason = SERVE_ERROR;
            break;
        }
        /* Clear the event before looking at cmd_head (a command queued after
         * this read raises a new one). */
        uint32_t events;
        if (read(uio_fd, &events, sizeof events) < 0 && errno != EAGAIN && errno != EINTR) {
            err = errno;
            reason = SERVE_ERROR;
            break;
        }
    }
    goto answer;
failed: /* what was published stays published: the caller must learn the tail */
    {
        PyObject *type, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        PyErr_NormalizeException(&type, &exc, &tb);
        if (tb != NULL)
            PyException_SetTraceback(exc, tb);
        Py_XDECREF(type);
        Py_XDECREF(tb);
        reason = SERVE_EXCEPTION;
    }
answer:
    result = Py_BuildValue("(iKnnniO)", reason, (unsigned long long)tail, served, busy, kicks,
                           err, exc ? exc : Py_None);
    Py_XDECREF(exc);

done:
    PyBuffer_Release(&buf);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {"serve", serve, METH_VARARGS, serve_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastring",
    "The ring thread's compiled fast path for plain READ/WRITE (see _fastring.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastring(void)
{
    return PyModule_Create(&module);
}
