#!/usr/bin/env bash
# Packs what `deploy/bench.sh` needs into one folder, for a Linux x86-64 machine
# that has neither Go nor PostgreSQL and cannot install them (no network): the
# Tally binaries, built static, and this machine's PostgreSQL 15 (Debian's
# build, the one ../shared/bench/pg_bench.sh uses) with the shared libraries it
# links, and pg_bench.sh itself.
#
#   deploy/bench-bundle.sh DIR        # here: writes DIR/bundle.tar.xz and DIR/run.sh
#   DIR/run.sh env BENCH_NOBUILD=1 deploy/bench.sh   # there, as root, in a checkout
#
# run.sh unpacks the bundle into the checkout's bin/, /usr/lib/postgresql,
# /usr/share/postgresql and /opt/pglib (only the libraries the machine lacks are
# kept, so its own libraries are never shadowed), copies pg_bench.sh to
# ../shared/bench, creates the postgres user if needed, then runs its arguments.
# docs/BENCHMARKS.md runs 21 and 22 were made this way.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:?usage: deploy/bench-bundle.sh DIR}
pg=/usr/lib/postgresql/15
[ -x "$pg/bin/postgres" ] || { echo "no PostgreSQL 15 in $pg" >&2; exit 1; }
stage=$(mktemp -d /tmp/tally-bundle.XXXXXX)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$dest" "$stage/bin" "$stage/root/usr/lib/postgresql" "$stage/root/usr/share/postgresql" "$stage/root/opt/pglib"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$stage/bin/" ./cmd/tallyd ./cmd/tallyctl ./cmd/tally-load ./cmd/tally-chaos
cp -a "$pg" "$stage/root/usr/lib/postgresql/"
# JIT is never used by the baseline's short statements; LLVM alone is 130 MB.
rm -rf "$stage/root$pg/lib/bitcode" "$stage/root$pg"/lib/llvmjit*
cp -a /usr/share/postgresql/15 "$stage/root/usr/share/postgresql/"
for f in "$stage/root$pg"/bin/* "$stage/root$pg"/lib/*.so; do ldd "$f" 2>/dev/null || true; done |
  awk '/=>/ {print $3}' | sort -u | grep -v -E 'libc\.so|libm\.so|ld-linux|libpthread|libdl\.so|librt\.so' |
  while read -r lib; do cp -L "$lib" "$stage/root/opt/pglib/"; done
cp ../shared/bench/pg_bench.sh "$stage/"
tar -C "$stage" -cf - bin root pg_bench.sh | xz -T0 -6 >"$dest/bundle.tar.xz"
cat >"$dest/run.sh" <<'RUN'
#!/usr/bin/env bash
# Unpacks bundle.tar.xz (made by deploy/bench-bundle.sh) and runs its arguments
# from the checkout this is called in.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d /tmp/tally-bundle.XXXXXX)
tar -xJf "$here/bundle.tar.xz" -C "$tmp"
mkdir -p bin && cp "$tmp"/bin/* bin/
cp -a "$tmp/root/usr/lib/postgresql" /usr/lib/ && cp -a "$tmp/root/usr/share/postgresql" /usr/share/
mkdir -p /opt/pglib && cp "$tmp"/root/opt/pglib/* /opt/pglib/
for f in /opt/pglib/*; do
  n=$(basename "$f")
  if [ -e "/lib/x86_64-linux-gnu/$n" ] || [ -e "/usr/lib/x86_64-linux-gnu/$n" ]; then rm "$f"; fi
done
echo /opt/pglib >/etc/ld.so.conf.d/zz-pglib.conf && ldconfig
mkdir -p ../shared/bench && cp "$tmp/pg_bench.sh" ../shared/bench/
id postgres >/dev/null 2>&1 || useradd -r -M postgres
rm -rf "$tmp"
export PATH=/usr/lib/postgresql/15/bin:$PATH
echo "machine: $(nproc) CPUs, $(uname -sr); PostgreSQL libraries added: $(ls /opt/pglib | tr '\n' ' ')"
"$@"
RUN
chmod +x "$dest/run.sh"
ls -l "$dest"
