package ledger

// FNV-1a 64-bit parameters (http://www.isthe.com/chongo/tech/comp/fnv/).
const (
	fnvOffset64 uint64 = 14695981039346656037
	fnvPrime64  uint64 = 1099511628211
)

// ShardOf returns the shard, in [0, shards), that owns a member of a program:
// FNV-1a 64 over program + "\x00" + member, modulo shards. All of a member's
// accounts, holds and journal live on one shard, which is what makes linked
// requests on one member atomic without cross-shard coordination.
//
// The function is part of the on-disk format and must never change: changing
// it (or its hash, separator or reduction) moves members to other shards and
// so re-shards every existing cluster. shards must be > 0; it panics
// otherwise, as that is a configuration bug.
func ShardOf(program, member string, shards int) int {
	if shards <= 0 {
		panic("ledger: ShardOf needs shards > 0")
	}
	h := fnvOffset64
	for i := 0; i < len(program); i++ {
		h ^= uint64(program[i])
		h *= fnvPrime64
	}
	h *= fnvPrime64 // the NUL separator: h ^= 0 is a no-op
	for i := 0; i < len(member); i++ {
		h ^= uint64(member[i])
		h *= fnvPrime64
	}
	return int(h % uint64(shards))
}
