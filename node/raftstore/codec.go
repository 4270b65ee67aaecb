package raftstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"time"

	"github.com/hashicorp/raft"
)

// Key layout. Big-endian integers make Pebble's bytewise order equal to
// numeric order, so a group's log is one contiguous, index-ordered key range.
//
//	log entry:  keyKindLog    | shard (4 bytes BE) | index (8 bytes BE)
//	stable key: keyKindStable | shard (4 bytes BE) | key bytes
const (
	keyKindLog    byte = 0x01
	keyKindStable byte = 0x02

	shardBytes   = 4
	indexBytes   = 8
	logKeyBytes  = 1 + shardBytes + indexBytes
	keyHeadBytes = 1 + shardBytes

	// maxStableKeyBytes bounds stable keys. Raft only uses a handful of short
	// keys ("CurrentTerm", "LastVoteTerm", "LastVoteCand"); a long key means a
	// caller bug, not a legitimate use.
	maxStableKeyBytes = 1 << 10
)

// Log value layouts. Every version starts with its version byte and ends with
// a 4-byte BE CRC32-C of every preceding byte. That frame must stay the same in
// every future version: it is how a build tells an intact entry in a version it
// does not know (a newer build's, never deleted) from damage.
//
// Version 2, written by this build:
//
//	version   1 byte (logCodecV2)
//	shard     uvarint
//	index     uvarint
//	term      uvarint
//	type      1 byte (raft.LogType)
//	data      uvarint length, then bytes
//	ext       uvarint length, then bytes
//	appended  varint unix nanoseconds (0 encodes the zero time.Time)
//	checksum  4 bytes BE, CRC32-C of every preceding byte
//
// The shard and index of the key are stored in the value, under the checksum,
// and decoding requires them to equal the key's: a value copied or written
// under another key (another shard's log, or another index) is corrupt, not
// data.
//
// Version 1, written by older builds and still read, is version 2 without the
// shard. Its index is checked against the key's, but an entry moved to another
// shard at the same index is not detected.
//
// Why the key is stored in the value rather than only mixed into the checksum
// (a CRC seeded with shard and index): an older build verifies the frame
// checksum before looking at the version, so a seeded checksum would make it
// see every version-2 entry as damage, and Options.RepairTail would then
// delete intact, acknowledged entries after a downgrade. Stored, the key costs
// a byte or two per entry and the older build reports "unknown version",
// which it never deletes.
const (
	logCodecV1 byte = 1
	logCodecV2 byte = 2
	// logCodecVersion is the version this build writes.
	logCodecVersion = logCodecV2
)

const (
	checksumBytes = 4
	// minLogValueBytes is the shortest value of any known version: version +
	// index + term + type + two empty lengths + appended + checksum, each
	// varint at its shortest (1 byte), as in version 1.
	minLogValueBytes = 1 + 1 + 1 + 1 + 1 + 1 + 1 + checksumBytes
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errChecksum and errMalformed are the causes wrapped by CorruptLogError.
var (
	errChecksum  = errors.New("checksum mismatch")
	errMalformed = errors.New("malformed encoding")
	// errUnknownVersion is an entry this build cannot read, most likely
	// written by a newer one: never deleted as damage.
	errUnknownVersion = fmt.Errorf("%w: unknown version", errMalformed)
	// errMisplaced is an intact value that names another shard or index than
	// the key it is stored under: damage (a misdirected write or copy), the
	// same as a checksum mismatch.
	errMisplaced = fmt.Errorf("%w: stored under another key", errMalformed)
)

// ErrCorruptLog is matched (errors.Is) by every error reporting a stored log
// entry that failed verification.
var ErrCorruptLog = errors.New("raftstore: corrupt log entry")

// CorruptLogError reports a stored log entry that failed verification.
type CorruptLogError struct {
	Shard uint32
	Index uint64
	Cause error
}

// Error reports shard, index and cause, e.g.
// "raftstore: corrupt log entry shard=3 index=42: checksum mismatch".
func (e *CorruptLogError) Error() string {
	return fmt.Sprintf("raftstore: corrupt log entry shard=%d index=%d: %v", e.Shard, e.Index, e.Cause)
}

// Is makes errors.Is(err, ErrCorruptLog) true.
func (e *CorruptLogError) Is(target error) bool { return target == ErrCorruptLog }

// Unwrap returns the cause.
func (e *CorruptLogError) Unwrap() error { return e.Cause }

func logKey(shard uint32, index uint64) []byte {
	k := make([]byte, logKeyBytes, logKeyBytes+1)
	k[0] = keyKindLog
	binary.BigEndian.PutUint32(k[1:], shard)
	binary.BigEndian.PutUint64(k[keyHeadBytes:], index)
	return k
}

// logKeyEnd is the exclusive upper bound just past index: the immediate
// successor of logKey(shard, index) in bytewise order.
func logKeyEnd(shard uint32, index uint64) []byte {
	return append(logKey(shard, index), 0)
}

func stableKey(shard uint32, key []byte) []byte {
	k := make([]byte, keyHeadBytes+len(key))
	k[0] = keyKindStable
	binary.BigEndian.PutUint32(k[1:], shard)
	copy(k[keyHeadBytes:], key)
	return k
}

// logIndexOfKey returns the index of a log key of any shard.
func logIndexOfKey(k []byte) (uint64, bool) {
	if len(k) != logKeyBytes || k[0] != keyKindLog {
		return 0, false
	}
	return binary.BigEndian.Uint64(k[keyHeadBytes:]), true
}

// appendLog appends the encoding of l, stored in shard's log, to dst in the
// current version. It does not allocate when dst has room: StoreLogs calls it
// for every entry.
func appendLog(dst []byte, shard uint32, l *raft.Log) []byte {
	return appendLogVersion(dst, logCodecVersion, shard, l)
}

// appendLogVersion appends the encoding of l in version v (logCodecV1 or
// logCodecV2). Version 1 is what builds before version 2 read: a node that
// may still be downgraded writes it (Options.LegacyCodec).
func appendLogVersion(dst []byte, v byte, shard uint32, l *raft.Log) []byte {
	start := len(dst)
	dst = append(dst, v)
	if v >= logCodecV2 {
		dst = binary.AppendUvarint(dst, uint64(shard))
	}
	dst = binary.AppendUvarint(dst, l.Index)
	dst = binary.AppendUvarint(dst, l.Term)
	dst = append(dst, byte(l.Type))
	dst = binary.AppendUvarint(dst, uint64(len(l.Data)))
	dst = append(dst, l.Data...)
	dst = binary.AppendUvarint(dst, uint64(len(l.Extensions)))
	dst = append(dst, l.Extensions...)
	var appendedNs int64
	if !l.AppendedAt.IsZero() {
		appendedNs = l.AppendedAt.UnixNano()
	}
	dst = binary.AppendVarint(dst, appendedNs)
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// encodedLogBytes is an upper bound on the encoding size of l.
func encodedLogBytes(l *raft.Log) int {
	return 1 + binary.MaxVarintLen32 + 3*binary.MaxVarintLen64 + 1 + 2*binary.MaxVarintLen64 +
		len(l.Data) + len(l.Extensions) + checksumBytes
}

// decodeLog verifies v, the value stored under the log key (shard, index),
// and decodes it into l. Data and Extensions are copied, so v may be reused
// after decodeLog returns. The returned error is errChecksum or wraps
// errMalformed (errUnknownVersion, errMisplaced); the caller adds shard and
// index. On error l is left unchanged.
func decodeLog(v []byte, shard uint32, index uint64, l *raft.Log) error {
	if len(v) < minLogValueBytes {
		return fmt.Errorf("%w: %d bytes is shorter than the minimum %d", errMalformed, len(v), minLogValueBytes)
	}
	body, sum := v[:len(v)-checksumBytes], v[len(v)-checksumBytes:]
	// The checksum comes first, so that damage to the version byte reads as
	// damage, not as an unknown version that must never be deleted.
	if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(sum) {
		return errChecksum
	}
	d := decoder{b: body[1:]}
	valueShard := shard
	switch body[0] {
	case logCodecV1:
		// Version 1 does not name its shard; only its index can be checked.
	case logCodecV2:
		if s := d.uvarint(); s <= math.MaxUint32 {
			valueShard = uint32(s)
		} else {
			d.fail("shard")
		}
	default:
		return fmt.Errorf("%w %d", errUnknownVersion, body[0])
	}
	valueIndex := d.uvarint()
	term := d.uvarint()
	typ := d.byte()
	data := d.bytes()
	ext := d.bytes()
	appendedNs := d.varint()
	if d.err != nil {
		return d.err
	}
	if len(d.b) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", errMalformed, len(d.b))
	}
	if valueShard != shard {
		return fmt.Errorf("%w: value has shard %d", errMisplaced, valueShard)
	}
	if valueIndex != index {
		return fmt.Errorf("%w: value has index %d", errMisplaced, valueIndex)
	}
	*l = raft.Log{
		Index:      valueIndex,
		Term:       term,
		Type:       raft.LogType(typ),
		Data:       data,
		Extensions: ext,
	}
	if appendedNs != 0 {
		l.AppendedAt = time.Unix(0, appendedNs)
	}
	return nil
}

// decoder reads fields in order; the first failure sticks in err.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated or invalid %s", errMalformed, what)
	}
	d.b = nil
}

// uvarint and varint accept only the shortest encoding, the one
// binary.AppendUvarint and AppendVarint write, so that a value decodes from
// exactly one byte string (as the ledger's codec does).
func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 || n != uvarintLen(v) {
		d.fail("uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// uvarintLen is the length of the shortest uvarint encoding of v.
func uvarintLen(v uint64) int {
	n := 1
	for ; v >= 0x80; v >>= 7 {
		n++
	}
	return n
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 || n != uvarintLen(uint64(v)<<1^uint64(v>>63)) {
		d.fail("varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail("byte")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

// bytes reads a length-prefixed byte string, returning a copy (nil if empty).
func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("length")
		return nil
	}
	if n == 0 {
		return nil
	}
	v := make([]byte, n)
	copy(v, d.b[:n])
	d.b = d.b[n:]
	return v
}
