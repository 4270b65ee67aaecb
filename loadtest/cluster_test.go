package loadtest

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/linearizability"
)

// TestSmokeRealCluster runs a short flash sale against three real tallyd
// processes on 127.0.0.1 (ports chosen at run time; the cluster is stopped
// at the end) and expects every check to pass. Skipped under -short.
func TestSmokeRealCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real cluster")
	}
	dir := t.TempDir()
	tallyd := filepath.Join(dir, "tallyd")
	build := exec.Command("go", "build", "-o", tallyd, "./cmd/tallyd")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building tallyd: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := linearizability.StartCluster(ctx, linearizability.ClusterConfig{Tallyd: tallyd, Dir: filepath.Join(dir, "cluster"), Shards: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cl, err := client.Dial(ctx, client.Config{Addrs: c.GRPCAddrs(), Coalesce: true})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	rep, err := Run(ctx, cl, true, Config{
		Workload: Workload{Scenario: FlashSale, Members: 2000}, Clients: 32,
		Duration: 3 * time.Second, Warmup: 500 * time.Millisecond, Seed: testSeed,
	})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	Summary(&b, rep)
	t.Logf("\n%s", b.String())
	v := rep.Verification
	if !rep.OK || rep.Ops == 0 || v.AckedOps == 0 || v.AccountsChecked == 0 || v.ShardsChecked != 4 {
		t.Fatalf("smoke run did not pass")
	}
	if crashes := c.Crashes(); len(crashes) > 0 {
		t.Fatalf("nodes crashed: %v", crashes)
	}
}
