// Package node is a Tally process: it runs one hashicorp/raft group per
// shard (every shard replicated on every node), all groups sharing one Raft
// port (node/transport) and one Pebble log store (node/raftstore), each
// group's state machine in the node's Pebble state DB (fsm), and serves the
// gRPC API.
//
// Writes: a handler validates and converts a request at the edge (malformed
// input never reaches the log), then hands it to its shard's proposer, which
// packs concurrent requests into one log entry stamped with the leader's
// clock. Reads: served only by the shard leader after it has applied every
// entry of earlier terms (one Barrier per term) and confirmed, after the read
// arrived, that a quorum still follows it: followers accepted it as leader in
// requests sent after the read arrived (acks.go; VerifyLeader makes them
// answer, and one round is shared by all reads that arrive while one is in
// flight).
package node
