package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/tally-ledger/tally/client"
)

// replicasCommand compares every shard's replicas by their consistency
// checks (README, "Replica consistency checks") without scanning any
// state: it reads each node's newest check and its leader's comparisons,
// and exits non-zero when two replicas report different hashes at the
// same index, a check failed, a leader reports a replica it found
// different, or a node does not answer (a cron job must not read
// silence as agreement).
func replicasCommand() command {
	return command{
		name:     "replicas",
		synopsis: "compare every shard's replicas by their newest consistency checks; exits non-zero if any differ",
		flags: func(fs *flag.FlagSet, a *args) {
			fs.IntVar(&a.replicaShard, "shard", -1, "only this shard (default: every shard)")
		},
		do: func(ctx context.Context, c *client.Client, a *args) (view, error) {
			info, err := c.ClusterInfo(ctx)
			if err != nil {
				return nil, err
			}
			shards, err := selectedShards(info.Shards, a.replicaShard)
			if err != nil {
				return nil, err
			}
			nodes := append([]client.Node(nil), info.Nodes...)
			sort.Slice(nodes, func(i, j int) bool { return nodes[i].ID < nodes[j].ID })
			var v replicasView
			for _, shard := range shards {
				sv := shardReplicas{Shard: uint32(shard)}
				for _, n := range nodes {
					st, err := c.ShardSummary(ctx, n.GRPCAddr, uint32(shard))
					r := replicaRow{Node: n.ID}
					if err != nil {
						r.Error = err.Error()
					} else {
						r.Leader, r.AppliedIndex, r.CheckIndex = st.Leader, st.AppliedIndex, st.CheckIndex
						r.CheckHash, r.CheckError, r.Compared = hex.EncodeToString(st.CheckHash), st.CheckError, st.ReplicaChecks
					}
					sv.Replicas = append(sv.Replicas, r)
				}
				sv.Problems = replicaProblems(sv.Replicas)
				v.Shards = append(v.Shards, sv)
			}
			var bad []string
			for _, s := range v.Shards {
				if len(s.Problems) > 0 {
					bad = append(bad, fmt.Sprint(s.Shard))
				}
			}
			if len(bad) > 0 {
				return v, fmt.Errorf("replicas differ, a check failed, or a node did not answer, on shard(s) %s (README, \"Replica consistency checks\")",
					strings.Join(bad, ", "))
			}
			return v, nil
		},
	}
}

type replicaRow struct {
	Node         string                `json:"node"`
	Error        string                `json:"error,omitempty"` // the node did not answer
	Leader       bool                  `json:"leader"`
	AppliedIndex uint64                `json:"applied_index"`
	CheckIndex   uint64                `json:"check_index"`
	CheckHash    string                `json:"check_hash"`
	CheckError   string                `json:"check_error,omitempty"`
	Compared     []client.ReplicaCheck `json:"-"`
}

type shardReplicas struct {
	Shard    uint32       `json:"shard"`
	Replicas []replicaRow `json:"replicas"`
	// Problems: replicas whose checks at one index differ, failed checks,
	// and what the leader found.
	Problems []string `json:"problems"`
}

type replicasView struct {
	Shards []shardReplicas `json:"shards"`
}

// replicaProblems lists what a shard's replicas show wrong: a node that
// did not answer (it may be the one whose state differs), two with
// different hashes at one check index, a check that failed, and a replica
// the leader found different or whose walk failed.
func replicaProblems(rows []replicaRow) []string {
	problems := []string{}
	byIndex := map[uint64]replicaRow{}
	for _, r := range rows {
		if r.Error != "" {
			problems = append(problems, fmt.Sprintf("%s: no answer: %s", r.Node, r.Error))
			continue
		}
		if r.CheckIndex == 0 {
			continue
		}
		if r.CheckError != "" {
			problems = append(problems, fmt.Sprintf("%s: check at index %d: %s", r.Node, r.CheckIndex, r.CheckError))
		}
		if r.CheckHash != "" {
			// A walk that failed has no hash to compare.
			if o, ok := byIndex[r.CheckIndex]; ok && o.CheckHash != r.CheckHash {
				problems = append(problems, fmt.Sprintf("%s and %s: different state at index %d", o.Node, r.Node, r.CheckIndex))
			}
			byIndex[r.CheckIndex] = r
		}
		for _, c := range r.Compared {
			switch {
			case c.Error != "":
				problems = append(problems, fmt.Sprintf("leader %s: %s's check at index %d failed: %s", r.Node, c.NodeID, c.Index, c.Error))
			case !c.Match:
				problems = append(problems, fmt.Sprintf("leader %s: %s's state differs at index %d", r.Node, c.NodeID, c.Index))
			}
		}
	}
	return problems
}

func (v replicasView) jsonValue() any { return v }

func (v replicasView) text(w io.Writer) {
	fmt.Fprintf(w, "SHARD\tNODE\tLEADER\tAPPLIED\tCHECK INDEX\tCHECK HASH\n")
	for _, s := range v.Shards {
		for _, r := range s.Replicas {
			if r.Error != "" {
				fmt.Fprintf(w, "%d\t%s\t-\t-\t-\t(no answer: %s)\n", s.Shard, r.Node, r.Error)
				continue
			}
			leader, index, hash := "", "none yet", "-"
			if r.Leader {
				leader = "*"
			}
			if r.CheckIndex > 0 {
				index, hash = fmt.Sprint(r.CheckIndex), shortHash(r.CheckHash)
			}
			fmt.Fprintf(w, "%d\t%s\t%s\t%d\t%s\t%s\n", s.Shard, r.Node, leader, r.AppliedIndex, index, hash)
		}
	}
	var out bytes.Buffer
	for _, s := range v.Shards {
		for _, p := range s.Problems {
			fmt.Fprintf(&out, "shard %d: %s\n", s.Shard, p)
		}
	}
	if out.Len() == 0 {
		fmt.Fprintf(w, "\nno replicas differ at a check index they share\n")
		return
	}
	fmt.Fprintf(w, "\n%s", out.String())
}

func shortHash(h string) string {
	if len(h) > 16 {
		return h[:16]
	}
	return h
}
