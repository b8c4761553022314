/*
 * appliance.engine._writerun: a run of host writes, its hot loops compiled.
 *
 * Two calls, each one Python step per run instead of several per write
 * (under TCG, the test VM, every interpreted step costs ~20x its native time):
 *
 * pwrite_pieces() writes a run's pieces to the primary, one pwritev per
 * stretch of adjacent pieces, the GIL released around the system calls
 * (what FileIO.pwrite_pieces does in Python through pwritev_all).
 *
 * pack_writes() lays out the journal records of a run of host writes, back
 * to back, in the journal's aligned write buffer (segfile.DirectWriter): for
 * every (offset, payload) item a 64-byte record header (docs/FORMAT.md,
 * "Record") with its CRC-32C, then the payload; and, where the run does not
 * end on a block boundary, the PAD record that ends it on one.  It makes the
 * run's Rec objects on the way.  It is what Journal._put, record.pack_record_
 * header, record.pack_pad and DirectWriter.write do for such a run, one
 * Python step per run instead of a dozen per record: under TCG (the test VM)
 * every interpreted step costs ~20x its native time.
 *
 * The checksums come from the crc32c package's function (passed in), the
 * same one record.py uses, so there is one CRC implementation.  The Python
 * code is the reference: tests/unit/test_writerun.py compares every byte.
 *
 * Header layout, little-endian ("<4sBBHQQQQII8sI" + crc):
 *   0 magic "CDPR" | 4 version u8 | 5 kind u8 | 6 flags u16 | 8 seq u64 |
 *   16 time_ns u64 | 24 offset u64 | 32 length u64 | 40 payload_len u32 |
 *   44 segno u32 | 48 vtag [8] | 56 reserved u32 | 60 crc u32
 *   crc = crc32c(header[0:60], crc32c(payload))   (crc32c(b"") = 0)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

#define HEADER 64u
#define KIND_WRITE 1u
#define KIND_PAD 6u
#define VERSION 2u
#define PACK_ALL 0   /* pack_writes' modes */
#define PLAN 1
#define PACK_BYTES 2

static inline void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* crc(obj, value) -> the C value, or -1 (exception set). */
static int64_t call_crc(PyObject *crc, PyObject *obj, uint32_t value)
{
    PyObject *v = PyLong_FromUnsignedLong(value);
    if (v == NULL)
        return -1;
    PyObject *args[2] = {obj, v};
    PyObject *r = PyObject_Vectorcall(crc, args, 2, NULL);
    Py_DECREF(v);
    if (r == NULL)
        return -1;
    unsigned long c = PyLong_AsUnsignedLong(r);
    Py_DECREF(r);
    if (c == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    return (int64_t)(c & 0xFFFFFFFFu);
}

/* crc over len bytes at p (a read-only memoryview of the buffer). */
static int64_t crc_at(PyObject *crc, uint8_t *p, Py_ssize_t len, uint32_t value)
{
    PyObject *mv = PyMemoryView_FromMemory((char *)p, len, PyBUF_READ);
    if (mv == NULL)
        return -1;
    int64_t c = call_crc(crc, mv, value);
    Py_DECREF(mv);
    return c;
}

/* The header fields (all but the crc) at p. */
static void header(uint8_t *p, unsigned kind, uint64_t seq, uint64_t time_ns, uint64_t offset,
                   uint64_t length, uint32_t plen, uint32_t segno, const uint8_t *vtag)
{
    memcpy(p, "CDPR", 4);
    p[4] = VERSION;
    p[5] = (uint8_t)kind;
    put16(p + 6, 0);
    put64(p + 8, seq);
    put64(p + 16, time_ns);
    put64(p + 24, offset);
    put64(p + 32, length);
    put32(p + 40, plen);
    put32(p + 44, segno);
    memcpy(p + 48, vtag, 8);
    put32(p + 56, 0);
}

/* One (offset, buffer, ...) tuple of a list: its offset and its bytes (view
 * filled, to be released by the caller).  ``exact``: the tuple has exactly 2
 * items, else at least 2.  0, or -1 with an exception set. */
static int take_item(PyObject *it, int exact, uint64_t *off, Py_buffer *view)
{
    if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) < 2 || (exact && PyTuple_GET_SIZE(it) != 2)) {
        PyErr_SetString(PyExc_TypeError, exact ? "items must be (offset, payload) tuples"
                                               : "pieces must be (offset, data, ...) tuples");
        return -1;
    }
    *off = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(it, 0));
    if (PyErr_Occurred())
        return -1;
    return PyObject_GetBuffer(PyTuple_GET_ITEM(it, 1), view, PyBUF_C_CONTIGUOUS);
}

static void release_views(Py_buffer *views, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (views[i].obj != NULL)
            PyBuffer_Release(&views[i]);
    PyMem_Free(views);
}

PyDoc_STRVAR(pack_writes_doc,
"pack_writes(buf, used, pos, items, seq, time_ns, segno, vtag, align, limit, most, crc,\n"
"            rec, mode=PACK_ALL)\n"
"\n"
"The WRITE records of ``items`` ((offset, payload) pairs, payloads of at\n"
"most 8 MiB) into the writable buffer ``buf`` from byte ``used`` on, as the\n"
"records of segment ``segno`` starting at segment offset ``pos``, with\n"
"sequence numbers from ``seq`` on and the timestamp ``time_ns``.  If\n"
"``align`` is not 0 and the records end off a multiple of it, a PAD record\n"
"(seq and time of the last record) follows up to the next multiple (plus\n"
"``align`` if the gap is under 64 bytes), unless that would pass ``limit``.\n"
"``crc`` is crc32c.crc32c; ``rec(seq, time_ns, kind, flags, offset, length,\n"
"addr, payload_len)`` makes each record's Rec.\n"
"\n"
"Returns (used, pos, recs): the buffer and segment offsets past what was\n"
"packed (PAD included) and the Recs; or None, with nothing packed, when the\n"
"records would pass ``limit`` or the buffer's end, or a payload is larger\n"
"than ``most`` bytes.\n"
"\n"
"``mode``: PACK_ALL (0) as above; PLAN (1) decides and makes the Recs but\n"
"writes nothing into ``buf`` and computes no CRC; PACK_BYTES (2) packs but\n"
"makes no Recs (recs is None).  PLAN, then PACK_BYTES with the same\n"
"arguments, is PACK_ALL in two steps (Journal.write_run in a late batch).");

static PyObject *pack_writes(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t used;
    unsigned long long pos, seq, time_ns, align, limit, most;
    unsigned long segno;
    PyObject *items, *crc, *rec;
    Py_buffer vtag;
    int mode = PACK_ALL;
    if (!PyArg_ParseTuple(args, "w*nKO!KKky*KKKOO|i", &buf, &used, &pos, &PyList_Type, &items,
                          &seq, &time_ns, &segno, &vtag, &align, &limit, &most, &crc, &rec, &mode))
        return NULL;
    PyObject *result = NULL, *recs = NULL;
    Py_buffer *views = NULL;
    Py_ssize_t n = PyList_GET_SIZE(items), got = 0;
    if (vtag.len != 8) {
        PyErr_SetString(PyExc_ValueError, "vtag must be 8 bytes");
        goto out;
    }
    if (used < 0 || used > buf.len) {
        PyErr_SetString(PyExc_ValueError, "used outside the buffer");
        goto out;
    }
    if (mode != PACK_ALL && mode != PLAN && mode != PACK_BYTES) {
        PyErr_SetString(PyExc_ValueError, "mode must be PACK_ALL, PLAN or PACK_BYTES");
        goto out;
    }
    int bytes_too = mode != PLAN, recs_too = mode != PACK_BYTES;
    views = PyMem_Calloc(n ? n : 1, sizeof(Py_buffer));
    if (views == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    uint64_t *offs = PyMem_Calloc(n ? n : 1, sizeof(uint64_t));
    if (offs == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    /* Pass 1: every item's offset and payload, and the run's size. */
    unsigned long long total = 0;
    int too_big = 0;
    for (got = 0; got < n; got++) {
        if (take_item(PyList_GET_ITEM(items, got), 1, &offs[got], &views[got]) < 0)
            break;
        if (views[got].len > (8 << 20)) {
            PyErr_SetString(PyExc_ValueError, "record payload above 8 MiB");
            got++;
            break;
        }
        if ((unsigned long long)views[got].len > most)
            too_big = 1;
        total += HEADER + (unsigned long long)views[got].len;
    }
    if (PyErr_Occurred())
        goto free_offs;
    unsigned long long end = pos + total, gap = 0;
    if (align && end % align) {
        gap = align - end % align;
        if (gap < HEADER)
            gap += align;
        if (end + gap > limit)
            gap = 0; /* the segment ends here */
    }
    if (too_big || end > limit ||
        (unsigned long long)used + total + gap > (unsigned long long)buf.len) {
        result = Py_None;
        Py_INCREF(result);
        goto free_offs;
    }
    if (recs_too && (recs = PyList_New(n)) == NULL)
        goto free_offs;
    /* Pass 2: the records. */
    uint8_t *p = (uint8_t *)buf.buf + used;
    unsigned long long at = pos;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t plen = (uint32_t)views[i].len;
        if (bytes_too) {
            int64_t pcrc = 0;
            if (plen) {
                pcrc = call_crc(crc, PyTuple_GET_ITEM(PyList_GET_ITEM(items, i), 1), 0);
                if (pcrc < 0)
                    goto free_offs;
            }
            header(p, KIND_WRITE, seq + i, time_ns, offs[i], plen, plen, (uint32_t)segno,
                   vtag.buf);
            int64_t hcrc = crc_at(crc, p, 60, (uint32_t)pcrc);
            if (hcrc < 0)
                goto free_offs;
            put32(p + 60, (uint32_t)hcrc);
            memcpy(p + HEADER, views[i].buf, plen);
        }
        if (recs_too) {
            PyObject *r = PyObject_CallFunction(rec, "KKIIKKKI", seq + i, time_ns, KIND_WRITE, 0u,
                                                offs[i], (unsigned long long)plen,
                                                ((unsigned long long)segno << 32) | at, plen);
            if (r == NULL)
                goto free_offs;
            PyList_SET_ITEM(recs, i, r);
        }
        p += HEADER + plen;
        at += HEADER + plen;
    }
    if (gap && bytes_too) {
        uint32_t plen = (uint32_t)(gap - HEADER);
        memset(p + HEADER, 0, plen);
        int64_t pcrc = plen ? crc_at(crc, p + HEADER, plen, 0) : 0;
        if (pcrc < 0)
            goto free_offs;
        header(p, KIND_PAD, n ? seq + n - 1 : seq - 1, time_ns, 0, 0, plen, (uint32_t)segno,
               vtag.buf);
        int64_t hcrc = crc_at(crc, p, 60, (uint32_t)pcrc);
        if (hcrc < 0)
            goto free_offs;
        put32(p + 60, (uint32_t)hcrc);
    }
    at += gap;
    result = Py_BuildValue("nKO", used + (Py_ssize_t)(total + gap), at, recs ? recs : Py_None);
free_offs:
    PyMem_Free(offs);
out:
    release_views(views, got);
    Py_XDECREF(recs);
    PyBuffer_Release(&vtag);
    PyBuffer_Release(&buf);
    return result;
}

#define MAX_IOV 1024

/* Write iov[0..n) at off in full (short writes resumed); 0 or an errno. */
static int pwritev_full(int fd, struct iovec *iov, int n, uint64_t off)
{
    while (n > 0) {
        int k = n < MAX_IOV ? n : MAX_IOV;
        ssize_t w = pwritev(fd, iov, k, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (w == 0)
            return EIO;
        off += (uint64_t)w;
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0 && w) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

PyDoc_STRVAR(pwrite_pieces_doc,
"pwrite_pieces(fd, pieces, stop) -> int\n"
"\n"
"Write pieces[:stop], (offset, data, ...) tuples, to fd: one pwritev for\n"
"every stretch of adjacent pieces (each ends where the next begins), short\n"
"writes resumed.  Returns how many pieces were written; at the first\n"
"stretch that fails it stops and returns the count before that stretch\n"
"(the caller writes piece by piece from there, which raises the error).");

static PyObject *pwrite_pieces(PyObject *self, PyObject *args)
{
    int fd;
    PyObject *pieces;
    Py_ssize_t stop;
    if (!PyArg_ParseTuple(args, "iO!n", &fd, &PyList_Type, &pieces, &stop))
        return NULL;
    if (stop < 0 || stop > PyList_GET_SIZE(pieces)) {
        PyErr_SetString(PyExc_ValueError, "stop outside the list");
        return NULL;
    }
    Py_buffer *views = PyMem_Calloc(stop ? stop : 1, sizeof(Py_buffer));
    struct iovec *iov = PyMem_Calloc(stop ? stop : 1, sizeof(struct iovec));
    uint64_t *offs = PyMem_Calloc(stop ? stop : 1, sizeof(uint64_t));
    Py_ssize_t got = 0, done = 0;
    if (views == NULL || iov == NULL || offs == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    for (got = 0; got < stop; got++) {
        if (take_item(PyList_GET_ITEM(pieces, got), 0, &offs[got], &views[got]) < 0)
            break;
        iov[got].iov_base = views[got].buf;
        iov[got].iov_len = (size_t)views[got].len;
    }
    if (PyErr_Occurred())
        goto out;
    Py_BEGIN_ALLOW_THREADS
    while (done < stop) {
        Py_ssize_t end = done;
        uint64_t at = offs[done];
        while (end < stop && offs[end] == at) {
            at += iov[end].iov_len;
            end++;
        }
        if (end - done > INT_MAX || pwritev_full(fd, iov + done, (int)(end - done), offs[done]))
            break;
        done = end;
    }
    Py_END_ALLOW_THREADS
out:
    release_views(views, got);
    PyMem_Free(iov);
    PyMem_Free(offs);
    return PyErr_Occurred() ? NULL : PyLong_FromSsize_t(done);
}

static PyMethodDef methods[] = {
    {"pwrite_pieces", pwrite_pieces, METH_VARARGS, pwrite_pieces_doc},
    {"pack_writes", pack_writes, METH_VARARGS, pack_writes_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "_writerun",
    "A run of host writes: primary pwritev and journal records in C (see the source).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__writerun(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "PACK_ALL", PACK_ALL) < 0 ||
        PyModule_AddIntConstant(m, "PLAN", PLAN) < 0 ||
        PyModule_AddIntConstant(m, "PACK_BYTES", PACK_BYTES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
