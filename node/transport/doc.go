// Package transport lets every Raft group (shard) of a node share one TCP
// port.
//
// A Mux owns the listener. Each outgoing connection starts with a fixed
// header (magic byte, version, shard as uint32 big-endian) and the Mux routes
// each incoming connection, by that header, to the shard's raft.StreamLayer;
// from there on the connection belongs to that shard's raft.NetworkTransport.
//
// Invariants:
//   - Every shard's StreamLayer advertises the Mux's address, so a node has
//     one Raft address for all of its groups.
//   - A connection reaches a StreamLayer's Accept only after a valid header
//     for that open shard; anything else is closed. A slow or silent client
//     is closed after a header timeout and never stalls the accept loop.
//   - Closing a StreamLayer closes every connection it accepted or dialed;
//     closing the Mux closes all of them and returns only once its goroutines
//     have exited.
package transport
