// Command tallyctl is the operator's and developer's command line for a
// Tally cluster: a thin layer of flags and output formatting over package
// client. Run "tallyctl help" for the commands.
//
// Every mutating command takes --key, the operation's idempotency key. Without
// it a random key is used and printed, so that a command whose outcome is
// unknown (a timeout) can be re-run with the same key: it then applies at most
// once. Exit status: 0 on success, 1 when the request or the operation failed
// (the message starts with the stable code, e.g. INSUFFICIENT_FUNDS), 2 on a
// usage error.
package main

import "os"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}
