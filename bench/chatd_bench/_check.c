/*
 * The load generator's hot loop in C (bench/chatd_bench/checker.py loads it with
 * ctypes): reads a connection's complete server frames and checks each
 * delivery of a broadcast the generator wrote, as loadgen.Bench.on_delivery
 * does in Python, and counts "Message sent" replies.  It stops at anything
 * else (another kind of frame, a delivery that fails a check, a frame not yet
 * complete) and returns where it stopped: Python takes that frame, reports
 * what is wrong with it, and calls again for the rest.
 *
 * A delivery, as chatd and the peers send it:
 *   {"from": "<8-char id>", "body": "~B<room:3>.<sender:5>.<seq:9>.<ns:20>~E", ...
 */

#include <stdint.h>
#include <string.h>

static const char FROM[] = "{\"from\": \"";            /* 10 bytes */
static const char BODY[] = "\", \"body\": \"~B";        /* 14 bytes */
static const char ACK[] = "{\"status\": \"success\", \"message\": \"Message sent\"}";

static int digits(const unsigned char *p, int n, int64_t *value)
{
    int64_t v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
        v = v * 10 + (p[i] - '0');
    }
    *value = v;
    return 1;
}

/*
 * buf[pos:len]: what the connection has received.  room, me: the receiver's
 * room and index.  expected[nclients]: the next seq expected from each
 * sender (updated).  ids: every client's 8-byte ID, by index.  now_ns: the
 * receive time, for latencies (lat, up to lat_cap entries, *lat_n so far;
 * lat_cap 0: none recorded).  out[0] += deliveries, out[1] += acks.
 */
long chatd_check(const unsigned char *buf, long pos, long len, int64_t room, int64_t me,
                 int32_t *expected, int64_t nclients, const unsigned char *ids,
                 int64_t now_ns, int64_t *lat, long lat_cap, long *lat_n, int64_t *out)
{
    const long ack_len = (long)sizeof(ACK) - 1;
    while (len - pos >= 2) {
        if (buf[pos] != 0x81 || (buf[pos + 1] & 0x80))
            break;                                  /* not an unmasked text frame */
        long n = buf[pos + 1] & 0x7F, start = pos + 2;
        if (n == 126) {
            if (len - pos < 4)
                break;
            n = ((long)buf[pos + 2] << 8) | buf[pos + 3];
            start = pos + 4;
        } else if (n == 127) {
            break;
        }
        long end = start + n;
        if (end > len)
            break;                                  /* not complete yet */
        const unsigned char *p = buf + start;
        if (n == ack_len && memcmp(p, ACK, ack_len) == 0) {
            out[1]++;
            pos = end;
            continue;
        }
        if (n < 10 + 8 + 14 + 42 || memcmp(p, FROM, 10) != 0 || memcmp(p + 18, BODY, 14) != 0)
            break;
        const unsigned char *m = p + 30;            /* "~B" */
        int64_t r, sender, seq, sent;
        if (m[5] != '.' || m[11] != '.' || m[21] != '.' || m[42] != '~' || m[43] != 'E'
            || !digits(m + 2, 3, &r) || !digits(m + 6, 5, &sender)
            || !digits(m + 12, 9, &seq) || !digits(m + 22, 20, &sent))
            break;
        if (r != room || sender == me || sender >= nclients || seq != expected[sender]
            || memcmp(p + 10, ids + 8 * sender, 8) != 0)
            break;                                  /* Python says what is wrong */
        if (lat_cap) {
            if (*lat_n >= lat_cap)
                break;                              /* Python empties the buffer */
            lat[(*lat_n)++] = now_ns - sent;
        }
        expected[sender] = (int32_t)(seq + 1);
        out[0]++;
        pos = end;
    }
    return pos;
}
