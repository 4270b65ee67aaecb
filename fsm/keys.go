package fsm

import "encoding/binary"

// Key layout. Every key of a shard starts with shardPrefix(shard) = 's' +
// shard (uint32 big-endian), so a shard's state is one contiguous range that
// snapshots stream and restores replace. Identifiers never contain NUL
// (ledger.Validate rejects control characters), so NUL separates them.
const (
	tagMeta    = 'm' // applied index, log time, journal sequence
	tagAsset   = 'a' // program, code -> Asset
	tagControl = 'c' // program, asset -> control balance
	tagAccount = 'A' // program, member, asset -> Account
	tagHold    = 'h' // program, member, hold key -> Hold
	tagExpiry  = 'x' // expiresAt (8B), program, member, hold key -> (empty)
	tagRecord  = 'r' // program, idempotency key -> Record (dedup + journal entry)
	tagJournal = 'j' // program, member, seq (8B) -> idempotency key
)

const shardPrefixLen = 5

// restoredKey is a node-local record of the shard (outside every shard's
// range, so no snapshot, state hash or restore excise covers it): the Raft
// index S of the snapshot the shard was last restored from, and the applied
// index A written in that snapshot, when A < S (see FSM.StateIndex).
func restoredKey(shard uint32) []byte {
	return append(binary.BigEndian.AppendUint32([]byte{'l'}, shard), 'r')
}

func shardPrefix(shard uint32) []byte {
	p := make([]byte, shardPrefixLen, 64)
	p[0] = 's'
	binary.BigEndian.PutUint32(p[1:], shard)
	return p
}

// shardBounds returns [lower, upper) covering every key of a shard.
func shardBounds(shard uint32) (lower, upper []byte) {
	lower = shardPrefix(shard)
	upper = make([]byte, shardPrefixLen)
	upper[0] = 's'
	if shard == ^uint32(0) {
		upper[0] = 's' + 1
	} else {
		binary.BigEndian.PutUint32(upper[1:], shard+1)
	}
	return lower, upper
}

type keyBuilder struct{ prefix []byte }

func (kb keyBuilder) key(tag byte, parts ...string) []byte {
	n := len(kb.prefix) + 1
	for _, p := range parts {
		n += len(p) + 1
	}
	return kb.appendKey(make([]byte, 0, n+8), tag, parts...)
}

// appendKey appends the key to dst: for keys that are only handed to a
// Pebble batch, which copies them, so one buffer serves every write.
func (kb keyBuilder) appendKey(dst []byte, tag byte, parts ...string) []byte {
	k := append(dst, kb.prefix...)
	k = append(k, tag)
	for i, p := range parts {
		if i > 0 {
			k = append(k, 0)
		}
		k = append(k, p...)
	}
	return k
}

func (kb keyBuilder) meta() []byte { return kb.key(tagMeta) }

func (kb keyBuilder) asset(program, code string) []byte {
	return kb.key(tagAsset, program, code)
}

func (kb keyBuilder) account(program, member, asset string) []byte {
	return kb.key(tagAccount, program, member, asset)
}

func (kb keyBuilder) hold(program, member, key string) []byte {
	return kb.key(tagHold, program, member, key)
}

// expiry orders holds by expiry time: the time is biased so that the
// big-endian bytes of any int64 sort in numeric order.
func (kb keyBuilder) expiry(expiresAtMs int64, program, member, key string) []byte {
	k := kb.expiryUpTo(expiresAtMs)
	k = append(k, program...)
	k = append(k, 0)
	k = append(k, member...)
	k = append(k, 0)
	return append(k, key...)
}

// expiryUpTo is the prefix of all expiry keys at exactly t; keys < expiryUpTo(t+1)
// expire at or before t.
func (kb keyBuilder) expiryUpTo(t int64) []byte {
	k := make([]byte, 0, len(kb.prefix)+1+8+64)
	k = append(k, kb.prefix...)
	k = append(k, tagExpiry)
	return binary.BigEndian.AppendUint64(k, uint64(t)^(1<<63))
}

func (kb keyBuilder) record(program, key string) []byte {
	return kb.key(tagRecord, program, key)
}

func (kb keyBuilder) journalPrefix(program, member string) []byte {
	k := kb.key(tagJournal, program, member)
	return append(k, 0)
}

func (kb keyBuilder) journal(program, member string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(kb.journalPrefix(program, member), seq)
}

// appendJournal appends journal(program, member, seq) to dst.
func (kb keyBuilder) appendJournal(dst []byte, program, member string, seq uint64) []byte {
	k := append(kb.appendKey(dst, tagJournal, program, member), 0)
	return binary.BigEndian.AppendUint64(k, seq)
}

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] != 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}
