# Shared by the benchmarks: sourced, not run. Sets $bin (release Kindling) and provides the
# server start/stop bookkeeping ($pid) and the median of the rounds.

# Root check, Debian packages, release build (or $KINDLING_BIN). $1: the script's name for
# messages.
bench_prepare() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "$1: needs root (network namespaces)" >&2
    exit 1
  fi
  scripts/setup.sh bench >/dev/null
  if [ -n "${KINDLING_BIN:-}" ]; then
    bin=$KINDLING_BIN # another build, e.g. the previous commit's, for a before/after comparison
  else
    cargo build --locked --release -q
    bin=$PWD/target/release/kindling
  fi
}

# Stop the server started last (its PID in $pid), if any.
pid=""
stop_server() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
  fi
}

# $1/nginx.conf (pid, error log and temp files in $1): nginx serving $3 on $2 with sendfile,
# at most $4 connections per worker, plus the server-block lines $5. Creates $1/nginx-tmp.
nginx_conf() {
  cat > "$1/nginx.conf" <<CONF
worker_processes auto;
pid $1/nginx.pid;
error_log $1/nginx-error.log warn;
events { worker_connections $4; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  client_body_temp_path $1/nginx-tmp;
  proxy_temp_path $1/nginx-tmp;
  fastcgi_temp_path $1/nginx-tmp;
  uwsgi_temp_path $1/nginx-tmp;
  scgi_temp_path $1/nginx-tmp;
  server {
    listen $2;
    root $3;
$5
  }
}
CONF
  mkdir -p "$1/nginx-tmp"
}

# The median of the numbers on stdin (separated by spaces or newlines).
median() {
  tr -s ' \n' '\n\n' | awk 'NF' | sort -g |
    awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'
}
