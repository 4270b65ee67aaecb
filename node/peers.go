package node

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// peerConns keeps one gRPC connection per peer for node-to-node calls (the
// DefineAsset fan-out and leadership balancing).
type peerConns struct {
	creds  credentials.TransportCredentials
	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	closed bool // a handler still running after close must not dial anew
}

func newPeerConns(creds credentials.TransportCredentials) *peerConns {
	return &peerConns{creds: creds, conns: map[string]*grpc.ClientConn{}}
}

func (p *peerConns) get(addr string) (tallypb.LedgerClient, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errUnavailable("node is shutting down")
	}
	if c, ok := p.conns[addr]; ok {
		return tallypb.NewLedgerClient(c), nil
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(p.creds))
	if err != nil {
		return nil, err
	}
	p.conns[addr] = c
	return tallypb.NewLedgerClient(c), nil
}

func (p *peerConns) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = map[string]*grpc.ClientConn{}
	p.closed = true
}

// defineFanoutMD is the gRPC metadata key that marks a Submit of
// DEFINE_ASSET as the DefineAsset fan-out's. Submit refuses DEFINE_ASSET
// without it, so that no client defines an asset on one shard by hand (at
// a scale the others do not have). It guards against mistakes, not
// attackers: the API has no authentication.
const defineFanoutMD = "tally-define-fanout"

// forwardDefineBudget bounds how long forwardDefine retries one shard
// whatever the caller's deadline: a shard without a quorum must not hold a
// handler (and a caller with no deadline) for good.
const forwardDefineBudget = 30 * time.Second

// forwardDefine sends one shard's DEFINE_ASSET op to that shard's leader,
// retrying while the leader is unknown or moving, until ctx ends or
// forwardDefineBudget passes. An answer that retrying cannot change (the
// leader refused the op) is returned at once.
func (n *Node) forwardDefine(ctx context.Context, s *shard, req *tallypb.DefineAssetRequest) (*tallypb.OpResult, error) {
	ctx, cancel := context.WithTimeout(ctx, forwardDefineBudget)
	defer cancel()
	shardID := s.id
	sub := &tallypb.SubmitRequest{
		Ops: []*tallypb.Op{{Kind: tallypb.OpKind_DEFINE_ASSET, Program: req.GetProgram(), Asset: req.GetAsset(),
			IdempotencyKey: req.GetIdempotencyKey(), Scale: req.GetScale()}},
		Shard: &shardID,
	}
	var last error
	backoff := 10 * time.Millisecond
	for {
		_, leaderID := s.raft.LeaderWithID()
		if p, ok := n.cfg.peerByID(string(leaderID)); ok && p.ID != n.cfg.ID {
			c, err := n.peers.get(p.GRPCAddr)
			if err == nil {
				actx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, defineFanoutMD, "1"), 5*time.Second)
				var resp *tallypb.SubmitResponse
				resp, err = c.Submit(actx, sub)
				cancel()
				switch {
				case err == nil && len(resp.GetResults()) == 1:
					return resp.GetResults()[0], nil
				case err == nil:
					err = fmt.Errorf("leader %s answered %d results for one op", p.ID, len(resp.GetResults()))
				case !retryableRemote(err):
					return nil, fmt.Errorf("shard %d: leader %s: %w", shardID, p.ID, err)
				}
			}
			last = err
		} else if ok && p.ID == n.cfg.ID {
			rs, err := s.propose(ctx, ledger.Request{Ops: []ledger.Op{defineAssetOp(req.GetProgram(), req.GetAsset(),
				req.GetIdempotencyKey(), uint8(req.GetScale()))}})
			if err == nil {
				cv := n.pb(s)
				if res := cv.result(rs[0]); cv.err == nil {
					return res, nil
				}
				// Applied but not answerable: try again; the retry
				// replays the definition.
				err = cv.err
			}
			last = err
		} else {
			last = errUnavailable(fmt.Sprintf("shard %d has no known leader", shardID))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("shard %d: %w", shardID, errUnavailable(fmt.Sprintf("define asset: %v; last: %v", ctx.Err(), last)))
		case <-time.After(backoff):
		}
		if backoff < 500*time.Millisecond {
			backoff *= 2
		}
	}
}

// retryableRemote reports whether a peer's Submit error may go away on
// another try: the leader moved or is unreachable, or the try timed out.
func retryableRemote(err error) bool {
	st := status.Convert(err)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == errorDomain {
			// INTERNAL from a leader may be "applied, answer not
			// rendered": a retry replays the stored result.
			c := ledger.Code(info.GetReason())
			return c == ledger.CodeNotLeader || c == ledger.CodeUnavailable || c == ledger.CodeInternal
		}
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted, codes.ResourceExhausted, codes.Internal, codes.Unknown:
		return true
	}
	return false
}

// peerCreds is what the node dials its peers' gRPC with: Config.PeerTLS, or
// plaintext.
func (n *Node) peerCreds() credentials.TransportCredentials {
	if n.cfg.PeerTLS != nil {
		return credentials.NewTLS(n.cfg.PeerTLS)
	}
	return insecure.NewCredentials()
}

// serverCreds is what the node's gRPC server takes connections with:
// Config.ServerTLS, or plaintext.
func (n *Node) serverCreds() credentials.TransportCredentials {
	if n.cfg.ServerTLS != nil {
		return credentials.NewTLS(n.cfg.ServerTLS)
	}
	return insecure.NewCredentials()
}

// verifyPeerCert accepts a certificate valid for the host of one of the
// cluster's addresses (--peers, Raft or gRPC) and for serving: a node's, as
// every node's certificate must name its host for its peers and clients to
// verify it as a server. One CA may sign clients' certificates too; those
// must neither speak Raft nor pass for a node (fromPeer). A client-only
// certificate (no server use) is refused even when one of its names, a
// wildcard say, matches a node's host (found by review).
func (n *Node) verifyPeerCert(leaf *x509.Certificate) error {
	if !servesTLS(leaf) {
		return fmt.Errorf("certificate %q is not for server use, as a node's must be", leaf.Subject.CommonName)
	}
	for _, p := range n.cfg.Peers {
		for _, addr := range []string{p.RaftAddr, p.GRPCAddr} {
			if host, _, err := net.SplitHostPort(addr); err == nil && leaf.VerifyHostname(host) == nil {
				return nil
			}
		}
	}
	return fmt.Errorf("certificate %q is valid for no node's address", leaf.Subject.CommonName)
}

// servesTLS reports whether leaf may authenticate a TLS server: no extended
// key usage at all, or server (or any) use among them.
func servesTLS(leaf *x509.Certificate) bool {
	if len(leaf.ExtKeyUsage) == 0 && len(leaf.UnknownExtKeyUsage) == 0 {
		return true
	}
	for _, u := range leaf.ExtKeyUsage {
		if u == x509.ExtKeyUsageServerAuth || u == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}

// fromPeer reports whether a gRPC call comes from a node of the cluster as
// far as this node can tell: with TLS, the caller's verified certificate
// passes verifyPeerCert; without TLS there is nothing to tell by, and every
// caller passes.
func (n *Node) fromPeer(ctx context.Context) bool {
	if n.cfg.ServerTLS == nil {
		return true
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.PeerCertificates) == 0 {
		return false
	}
	return n.verifyPeerCert(ti.State.PeerCertificates[0]) == nil
}
