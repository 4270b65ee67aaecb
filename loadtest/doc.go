// Package loadtest drives a Tally cluster with a synthetic loyalty workload
// and checks afterwards that the cluster kept every promise it made.
//
// A run has three phases. Setup defines the assets (POINTS, scale 0, for
// members; CNY, scale 2, for the campaign budget), opens every account of a
// fresh program named after the run, and seeds balances. Load drives one of
// three scenarios (uniform over all members, zipf, or a flash sale where most
// operations hit ten hot members and one campaign budget) with a mix of
// credits, debits, holds, captures and linearizable reads, either in a closed
// loop (N clients, each one request at a time, single operations or batches
// of B) or an open loop (requests scheduled at a fixed rate, latency measured
// from the intended start so that a stalled server cannot hide its stall:
// coordinated omission). Verify first settles every operation whose outcome
// the client never learnt by re-sending it with its key, as any client must
// (it applies once or replays its recorded result), then checks that:
//
//   - every acknowledged operation (all of them, or a random sample for
//     large runs) is stored with the code and sequence number the client
//     saw: a mismatch or a missing operation is a lost ack;
//   - final balances of checked accounts equal the balances predicted from
//     the seeds and the acknowledged (or settled) operations;
//   - on every node and shard, conservation holds and replicas at the same
//     applied index have the same state hash.
//
// A run that fails any of them is reported as failed (Report.OK false), and
// cmd/tally-load exits non-zero.
//
// Latencies are HDR histograms in microseconds (1 µs .. 1 h, 3 significant
// digits), kept per operation kind and striped over a few locks so that
// hundreds of client goroutines do not serialise on one.
package loadtest
