# scripts/lib/nginx.sh - run Debian's nginx with p11tls for one token (sourced by
# scripts/demo.sh and tests/nginx.sh). Needs the token's env.sh loaded
# (P11TLS_CERT, P11TLS_KEY_PEM, P11TLS_OPENSSL_CNF, P11TLS_KIND, P11TLS_DIR).
# Every process is tracked by PID; nothing is killed by name.

# A free TCP port on 127.0.0.1: nothing listens on it and no socket uses it (a
# connection in TIME-WAIT on it would make nginx's bind fail).
p11_free_port() {
  local p i
  for i in $(seq 1 100); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null &&
      [ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]; then
      echo "$p"
      return 0
    fi
  done
  echo "no free port found" >&2
  return 1
}

# ngx_grant_token_access USER: lets nginx's workers (running as USER) use the token:
# read access to the token store (the PIN itself stays in the master's memory and
# is never read by a worker).
ngx_grant_token_access() {
  local user=$1 group
  group=$(id -gn "$user")
  case "$P11TLS_KIND" in
  softhsm | softhsm-remote)
    chgrp -R "$group" "$P11TLS_DIR/tokens"
    chmod -R g+rX,g-w "$P11TLS_DIR/tokens"
    ;;
  nss)
    chgrp -R "$group" "$P11TLS_DIR/nssdb"
    chmod -R g+rwX "$P11TLS_DIR/nssdb"
    ;;
  esac
  if [ "$P11TLS_KIND" = softhsm-remote ] && [ -S "$P11TLS_DIR/p11kit.sock" ]; then
    chgrp "$group" "$P11TLS_DIR/p11kit.sock"
    chmod g+rw "$P11TLS_DIR/p11kit.sock"
  fi
  chmod o+x "$P11TLS_DIR" 2>/dev/null || true
}

# ngx_write_conf DIR PORT [key=value...]: writes DIR/nginx.conf. Options:
#   workers=N (2), tickets=on|off (on), user=NAME (www-data),
#   ciphers=LIST, key=PEM file (P11TLS_KEY_PEM), cert=PEM (P11TLS_CERT),
#   verify_client=CAFILE (mutual TLS), protocols="TLSv1.2" (TLSv1.2),
#   env="VAR ..." (more environment variables passed to the workers: `env` lines)
ngx_write_conf() {
  local dir=$1 port=$2
  shift 2
  local workers=2 tickets=on user=www-data key=$P11TLS_KEY_PEM cert=$P11TLS_CERT
  local ciphers="AES128-GCM-SHA256:AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"
  local verify_client="" protocols="TLSv1.2" extra_env="" kv v
  for kv in "$@"; do
    case "$kv" in
    workers=*) workers=${kv#*=} ;;
    tickets=*) tickets=${kv#*=} ;;
    user=*) user=${kv#*=} ;;
    ciphers=*) ciphers=${kv#*=} ;;
    key=*) key=${kv#*=} ;;
    cert=*) cert=${kv#*=} ;;
    verify_client=*) verify_client=${kv#*=} ;;
    protocols=*) protocols=${kv#*=} ;;
    env=*) extra_env=${kv#*=} ;;
    *) echo "ngx_write_conf: unknown option $kv" >&2; return 1 ;;
    esac
  done
  mkdir -p "$dir/tmp"
  [ -f "$dir/ticket.key" ] || (umask 077 && head -c 80 /dev/urandom > "$dir/ticket.key")
  chown -R "$user" "$dir/tmp"
  {
    echo "worker_processes $workers;"
    echo "pid $dir/nginx.pid;"
    echo "error_log $dir/error.log info;"
    echo "user $user;"
    echo "env OPENSSL_CONF; env SOFTHSM2_CONF; env P11_KIT_SERVER_ADDRESS; env P11TLS_DEBUG;"
    for v in $extra_env; do echo "env $v;"; done
    echo "events { worker_connections 256; }"
    echo "http {"
    echo "  log_format p11tls '\$pid \$ssl_protocol \$ssl_cipher \$ssl_session_reused \$status \$ssl_client_verify \"\$ssl_client_s_dn\"';"
    echo "  access_log $dir/access.log p11tls;"
    for t in client_body proxy fastcgi uwsgi scgi; do echo "  ${t}_temp_path $dir/tmp/$t;"; done
    echo "  ssl_session_cache shared:p11tls:1m;"
    echo "  ssl_session_timeout 10m;"
    echo "  ssl_session_tickets $tickets;"
    echo "  ssl_session_ticket_key $dir/ticket.key;"
    echo "  server {"
    echo "    listen 127.0.0.1:$port ssl reuseport;"
    echo "    ssl_certificate $cert;"
    echo "    ssl_certificate_key $key;"
    echo "    ssl_protocols $protocols;"
    echo "    ssl_ciphers $ciphers;"
    echo "    ssl_prefer_server_ciphers off;"
    if [ -n "$verify_client" ]; then
      echo "    ssl_client_certificate $verify_client;"
      echo "    ssl_verify_client on;"
    fi
    echo "    location / { return 200 \"hello from p11tls\\n\"; }"
    echo "  }"
    echo "}"
  } > "$dir/nginx.conf"
}

# ngx_start DIR [OPENSSL_CONF]: starts nginx in the foreground mode under our
# control; its master PID goes to DIR/master.pid. Fails (with the error log) if
# nginx does not come up within 15 s.
ngx_start() {
  local dir=$1 cnf=${2:-$P11TLS_OPENSSL_CNF} pid i port
  port=$(sed -n 's/.*listen 127.0.0.1:\([0-9]*\).*/\1/p' "$dir/nginx.conf" | head -1)
  : > "$dir/error.log"
  OPENSSL_CONF=$cnf nginx -c "$dir/nginx.conf" -g 'daemon off;' > "$dir/stdout.log" 2>&1 &
  pid=$!
  echo "$pid" > "$dir/master.pid"
  for i in $(seq 1 150); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "nginx exited during start-up:" >&2
      cat "$dir/stdout.log" "$dir/error.log" >&2
      return 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "nginx did not listen on $port within 15 s" >&2
  return 1
}

# Worker PIDs of the nginx whose master PID is in DIR/master.pid.
ngx_workers() {
  local m
  m=$(cat "$1/master.pid")
  ps -o pid= --ppid "$m" | tr -d ' ' | sort -n
}

# ngx_reload DIR: like `nginx -s reload` (SIGHUP to our master); waits until the
# old workers are gone and new ones answer.
ngx_reload() {
  local dir=$1 old new i
  old=$(ngx_workers "$dir")
  kill -HUP "$(cat "$dir/master.pid")"
  for i in $(seq 1 100); do
    new=$(ngx_workers "$dir")
    if [ -n "$new" ] && ! grep -qxF -f <(echo "$old") <(echo "$new"); then
      return 0
    fi
    sleep 0.1
  done
  echo "nginx reload did not replace the workers" >&2
  return 1
}

# ngx_stop DIR: stops our nginx (master and its workers), by PID, bounded.
ngx_stop() {
  local dir=$1 m workers i
  [ -f "$dir/master.pid" ] || return 0
  m=$(cat "$dir/master.pid")
  workers=$(ps -o pid= --ppid "$m" 2>/dev/null | tr -d ' ' || true)
  kill -TERM "$m" 2>/dev/null || true
  for i in $(seq 1 100); do
    kill -0 "$m" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$m" $workers 2>/dev/null || true
  wait "$m" 2>/dev/null || true
  rm -f "$dir/master.pid"
}
